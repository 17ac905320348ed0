#!/usr/bin/env python3
"""Send one message to relay-agent's loopback SMTP listener with the standard library.

    python3 smtplib_loopback.py RECIPIENT [HOST:PORT]
    (default 127.0.0.1:2525; enable it in the config: [listen] smtp = "127.0.0.1:2525")

For applications that only speak SMTP over TCP. No STARTTLS and no AUTH: the
listener is loopback only, and the agent does TLS and AUTH to the relay itself.
"""

from __future__ import annotations

import smtplib
import sys
from email.message import EmailMessage


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {argv[0]} RECIPIENT [HOST:PORT]", file=sys.stderr)
        return 64
    recipient = argv[1]
    host, _, port = (argv[2] if len(argv) > 2 else "127.0.0.1:2525").rpartition(":")

    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"  # a domain relay-agent signs for
    msg["To"] = recipient
    msg["Subject"] = "Hello over loopback SMTP"
    msg.set_content("Sent with smtplib to relay-agent's loopback listener.\n")

    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.send_message(msg)  # 250 to DATA = durably queued by the agent
    print(f"queued for {recipient}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
