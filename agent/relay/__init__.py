"""One connection to the smarthost: handshake (STARTTLS, AUTH), transactions, per-recipient results,
credentials.
"""
