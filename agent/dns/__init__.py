"""`dns check`: the Elastx token, SPF, DKIM and DMARC records of a sender domain."""
