"""What a relay transaction sends: MAIL and RCPT with their ESMTP parameters, the RFC 2920 batch (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.mail.smtp_text import xtext
from agent.queue.message_source import MessageSource

_CONTROL_CHARS = re.compile(rb"[\x00-\x1f\x7f]")


def dsn_mail_options(dsn: Mapping[str, str]) -> list[str]:
    """RET/ENVID for MAIL; invalid values are dropped so a typo can never earn a permanent 501."""
    opts = []
    ret = dsn.get("ret", "").upper()
    if ret in ("FULL", "HDRS"):
        opts.append(f"RET={ret}")
    envid = dsn.get("envid", "")
    if envid and envid.isascii():
        opts.append(f"ENVID={xtext(envid)[:100]}")
    return opts


def dsn_rcpt_options(dsn: Mapping[str, str]) -> list[str]:
    notify = [n.strip().upper() for n in dsn.get("notify", "").split(",") if n.strip()]
    if notify == ["NEVER"] or (notify and set(notify) <= {"SUCCESS", "FAILURE", "DELAY"}):
        return ["NOTIFY=" + ",".join(notify)]
    return []


def esmtp_options(
    offers: Callable[[str], bool], utf8: bool, message: MessageSource, dsn: Mapping[str, str]
) -> tuple[list[bytes], list[bytes]]:
    """MAIL's and RCPT's parameters, for the extensions the relay offers."""
    mail: list[str] = []
    rcpt: list[str] = []
    if offers("size"):
        mail.append(f"SIZE={message.size}")
    if offers("8bitmime") and not message.ascii:
        mail.append("BODY=8BITMIME")
    # Without SMTPUTF8 on offer we still try: the relay's own reply decides (5xx = permanent).
    if utf8 and offers("smtputf8"):
        mail.append("SMTPUTF8")
    if offers("dsn"):
        mail += dsn_mail_options(dsn)
        rcpt += dsn_rcpt_options(dsn)
    return [o.encode() for o in mail], [o.encode() for o in rcpt]


def command(*args: bytes) -> bytes:
    for arg in args:
        if _CONTROL_CHARS.search(arg):  # as aiosmtplib does: CR/LF in an address would inject commands
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


@dataclass(frozen=True)
class Transaction:
    sender: str
    recipients: Sequence[str]
    message: MessageSource
    mail_opts: list[bytes]
    rcpt_opts: list[bytes]
    enc: str  # "utf-8" when an address needs it, else "ascii"

    def mail_args(self) -> tuple[bytes, ...]:
        return (b"MAIL", b"FROM:<" + self.sender.encode(self.enc) + b">", *self.mail_opts)

    def rcpt_args(self, rcpt: str) -> tuple[bytes, ...]:
        return (b"RCPT", b"TO:<" + rcpt.encode(self.enc) + b">", *self.rcpt_opts)

    def pipelined_batch(self) -> bytes:
        """RFC 2920: MAIL, every RCPT and DATA, sent in one write."""
        batch = [command(*self.mail_args())]
        batch += [command(*self.rcpt_args(r)) for r in self.recipients]
        batch.append(b"DATA\r\n")
        return b"".join(batch)


def new_transaction(
    sender: str,
    recipients: Sequence[str],
    message: MessageSource,
    dsn: Mapping[str, str],
    offers: Callable[[str], bool],
) -> Transaction:
    """offers(extension) says whether the relay's EHLO offered it."""
    utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
    mail_opts, rcpt_opts = esmtp_options(offers, utf8, message, dsn)
    return Transaction(sender, recipients, message, mail_opts, rcpt_opts, "utf-8" if utf8 else "ascii")
