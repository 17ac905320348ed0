"""Pure RFC text: addresses, headers, long lines, bounces, SMTP text helpers. No I/O."""
