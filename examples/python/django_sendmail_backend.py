"""A Django email backend that hands messages to relay-agent's `sendmail` (no SMTP listener needed).

    EMAIL_BACKEND = "myproject.mail.SendmailBackend"   # copy this file there
    SENDMAIL_COMMAND = "/usr/sbin/sendmail"             # optional

Works whether or not the relay-agent daemon is running: sendmail exits 0 only once
the message is durably queued (or in the maildrop), and its exit status follows
sysexits (65 bad message, 67 unknown local recipient, 75 try later, 77 policy).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from email.utils import parseaddr

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage


class SendmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        sent = 0
        for message in email_messages:
            try:
                self._send(message)
            except (OSError, subprocess.CalledProcessError):
                if not self.fail_silently:
                    raise
            else:
                sent += 1
        return sent

    def _send(self, message: EmailMessage) -> None:
        recipients = message.recipients()  # To + Cc + Bcc; Bcc is not in the headers
        if not recipients:
            return
        command = getattr(settings, "SENDMAIL_COMMAND", "/usr/sbin/sendmail")
        # Explicit recipients instead of -t, because Django never writes Bcc into the
        # message; "--" so an address can never be read as an option.
        sender = parseaddr(message.from_email)[1]  # "Name <a@b>" -> the bare envelope address
        argv = [command, "-i", "-f", sender, "--", *recipients]
        subprocess.run(argv, input=message.message().as_bytes(linesep="\r\n"), check=True, timeout=60)
