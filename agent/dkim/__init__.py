"""DKIM: which domain signs, the body hash, signing, and the key files."""
