#!/usr/bin/env python3
"""Send one message to relay-agent over its Unix socket with nothing but the standard library.

    python3 smtplib_unix_socket.py RECIPIENT [SOCKET]
    (default socket: /run/relay-agent/submit.sock, as [listen] socket in the config)

Plain SMTP on a local socket: no TLS, no AUTH, no TCP port. The agent replies 250
to DATA only once the message is durably queued; any refusal (e.g. 550 for a From:
domain with no DKIM key) raises smtplib.SMTPException with the agent's reason.
"""

from __future__ import annotations

import smtplib
import socket
import sys
from email.message import EmailMessage

DEFAULT_SOCKET = "/run/relay-agent/submit.sock"


class UnixSMTP(smtplib.SMTP):
    """smtplib.SMTP whose "host" is a Unix socket path."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.socket_path = path
        # local_hostname: EHLO needs a name; the agent knows who we are from the socket.
        super().__init__(local_hostname="localhost", timeout=timeout)
        # Not self.connect(path): smtplib would read a ":" in the path as a port.
        self.sock = self._get_socket(path, 0, timeout)
        code, reply = self.getreply()
        if code != 220:
            self.close()
            raise smtplib.SMTPConnectError(code, reply)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.socket_path)
        return sock


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {argv[0]} RECIPIENT [SOCKET]", file=sys.stderr)
        return 64
    recipient = argv[1]
    path = argv[2] if len(argv) > 2 else DEFAULT_SOCKET

    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"  # a domain relay-agent signs for
    msg["To"] = recipient
    msg["Subject"] = "Hello over the Unix socket"
    msg.set_content("Sent with smtplib over relay-agent's Unix socket.\n")

    with UnixSMTP(path) as smtp:
        smtp.send_message(msg)  # Date: and Message-ID: are added by the agent
    print(f"queued for {recipient}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
