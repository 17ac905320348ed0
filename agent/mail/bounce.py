"""RFC 3464 delivery status notifications: a pure builder.

The caller decides whether to bounce (never for a null sender, never when the
sender asked NOTIFY=NEVER); this module only writes the report.
"""

from __future__ import annotations

import binascii
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.mail.headers import format_date
from agent.mail.smtp_text import clean_line

# How much of the original a bounce returns (Postfix's bounce_size_limit): a bigger original
# comes back as its headers only (text/rfc822-headers), and the notice says so. The caller
# reads no more than this of the queue file.
SIZE_LIMIT = 50_000


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    reply: str  # the relay's reply, e.g. "550 5.1.1 no such user", or our own reason
    status: str = ""  # enhanced status code; derived from the reply when empty
    remote: bool = True  # the reply came from the relay (diagnostic-code: smtp)


def status_of(reply: str, default: str = "5.0.0") -> str:
    for word in reply.split()[:3]:
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return word
    return default


def build(
    *,
    qid: str,
    sender: str,
    failed: Sequence[FailedRecipient],
    original: bytes,
    hostname: str,
    mailer_daemon: str,
    relay: str,
    arrival: float,
    now: float | None = None,
    headers_only: bool = True,
    original_size: int | None = None,
) -> bytes:
    """The bounce message (CRLF) to `sender`, from `mailer_daemon`. `original` may be only the
    first SIZE_LIMIT bytes of a message of `original_size` bytes: then its headers are returned."""
    now = time.time() if now is None else now
    size = len(original) if original_size is None else original_size
    too_big = not headers_only and size > SIZE_LIMIT
    headers_only = headers_only or too_big
    boundary = f"{qid}.{binascii.hexlify(os.urandom(6)).decode()}/{hostname}"
    returned = _headers(original[:SIZE_LIMIT]) if headers_only else original
    parts = [
        f"From: Mail Delivery System <{mailer_daemon}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_date(now)}",
        f"Message-ID: <{qid}.bounce.{binascii.hexlify(os.urandom(4)).decode()}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        _notice(hostname, failed, headers_only, size if too_big else None),
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        _report(qid, hostname, relay, arrival, failed),
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers"
        if headers_only
        else "Content-Description: Undelivered Message",
        "Content-Type: text/rfc822-headers" if headers_only else "Content-Type: message/rfc822",
        "",
    ]
    text = "\r\n".join(parts).encode()
    return text + returned + f"\r\n--{boundary}--\r\n".encode()


def _notice(hostname: str, failed: Sequence[FailedRecipient], headers_only: bool, too_big: int | None) -> str:
    """The human-readable part; `too_big`: the size of an original returned as its headers only."""
    names = "\r\n".join(f"<{f.address}>: {clean_line(f.reply)}" for f in failed)
    return (
        f"This is the mail system at host {hostname}.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. "
        + ("Its headers are attached below.\r\n" if headers_only else "It's attached below.\r\n")
        + (_too_big_note(too_big) if too_big is not None else "")
        + f"\r\n{names}\r\n"
    )


def _report(qid: str, hostname: str, relay: str, arrival: float, failed: Sequence[FailedRecipient]) -> str:
    """The message/delivery-status part: per-message fields, then a block per recipient."""
    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {f.address}\r\n"
        f"Action: failed\r\n"
        f"Status: {f.status or status_of(f.reply)}\r\n"
        + (f"Remote-MTA: dns; {relay}\r\n" if f.remote and relay else "")
        + f"Diagnostic-Code: smtp; {clean_line(f.reply)}\r\n"
        for f in failed
    )
    return (
        f"Reporting-MTA: dns; {hostname}\r\nX-Relay-Agent-Queue-ID: {qid}\r\n"
        f"Arrival-Date: {format_date(arrival)}\r\n" + per_rcpt
    )


def _headers(original: bytes) -> bytes:
    """The header section, ending in CRLF; cut after its last whole line if it does not end within
    what was read."""
    head, blank, _ = original.partition(b"\r\n\r\n")
    if not blank:
        head = original[: original.rfind(b"\r\n")] if b"\r\n" in original else b""
    return head + b"\r\n" if head else b""


def _too_big_note(size: int) -> str:
    return (
        f"The message was {size} bytes, more than the {SIZE_LIMIT} bytes a notification\r\n"
        "returns in full, so only its headers are attached.\r\n"
    )
