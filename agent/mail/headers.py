"""Message header handling on bytes: pure, stdlib-only (no re, no email package).

Used by the sendmail fast path and by the daemon's cleanup. Works on CRLF or LF
messages; fields it adds use the message's own line ending.
"""

import posix  # not os: see config_path
import time

from agent.errors import MessageError
from agent.mail.addressing import parse_address_list

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the fast path cannot afford importing typing
if TYPE_CHECKING:
    from collections.abc import Callable

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SPECIALS = '()<>[]:;@\\,."'

Field = tuple[bytes, bytes]  # (lower-cased name, raw bytes of the field incl. continuations and EOL)


def _is_field_start(line: bytes) -> bool:
    colon = line.find(b":")
    if colon <= 0:
        return False
    return all(33 <= b <= 126 for b in line[:colon])


def parse(message: bytes) -> tuple[list[Field], int]:
    """The header fields and the offset where they end (the blank line, or the body).

    A message whose first line is not a header field is all body: no fields, offset 0.
    """
    fields: list[Field] = []
    pos = 0
    n = len(message)
    start = -1  # where the field being read began: sliced once, not grown per continuation line
    name = b""
    while pos < n:
        end = message.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = message[pos:end]
        if line[:1] in (b" ", b"\t") and start >= 0:
            pass  # a continuation line: the field runs on
        elif _is_field_start(line):
            if start >= 0:
                fields.append((name, message[start:pos]))
            name, start = line[: line.find(b":")].lower(), pos
        else:
            break  # blank line or a non-header line: the body starts here
        pos = end
    if start >= 0:
        fields.append((name, message[start:pos]))
    return fields, pos


def value(raw: bytes) -> str:
    """A field's unfolded value, decoded (UTF-8, undecodable bytes replaced)."""
    body = raw[raw.find(b":") + 1 :]
    text = body.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ").strip()
    return text.decode("utf-8", "replace").replace("\n", " ")


def get_all(message: bytes, name: str) -> list[str]:
    key = name.lower().encode()
    return [value(raw) for n, raw in parse(message)[0] if n == key]


def recipients_for_t(message: bytes) -> list[str]:
    """sendmail -t: addresses from To/Cc/Bcc, or Resent-To/Cc/Bcc if any Resent-* field exists."""
    fields = parse(message)[0]
    resent = any(n.startswith(b"resent-") for n, _ in fields)
    wanted = (b"resent-to", b"resent-cc", b"resent-bcc") if resent else (b"to", b"cc", b"bcc")
    out: list[str] = []
    for n, raw in fields:
        if n in wanted:
            out += parse_address_list(value(raw))
    return out


def remove(message: bytes, names: tuple[str, ...]) -> bytes:
    keys = {n.lower().encode() for n in names}
    fields, end = parse(message)
    if not any(n in keys for n, _ in fields):
        return message
    return b"".join(raw for n, raw in fields if n not in keys) + message[end:]


def strip_bcc(message: bytes) -> bytes:
    return remove(message, ("bcc", "resent-bcc"))


def eol_of(message: bytes) -> bytes:
    nl = message.find(b"\n")
    return b"\n" if nl > 0 and message[nl - 1 : nl] != b"\r" else b"\r\n"


def to_crlf(message: bytes) -> bytes:
    """Bare LF and bare CR become CRLF; existing CRLF stays."""
    if b"\r" not in message:
        return message.replace(b"\n", b"\r\n")
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def format_date(now: float) -> str:
    """RFC 5322 date in local time, independent of the locale."""
    t = time.localtime(now)
    off = (t.tm_gmtoff or 0) // 60
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (
        f"{DAYS[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"
    )


def make_message_id(hostname: str, now: float) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"<{stamp}.{posix.urandom(8).hex()}@{hostname or 'localhost'}>"


def display_name(name: str) -> str:
    """A phrase for From: quoted or RFC 2047-encoded as needed."""
    if not name.isascii():
        import binascii  # rare: not worth importing on every sendmail start

        encoded = binascii.b2a_base64(name.encode(), newline=False).decode()
        return f"=?utf-8?b?{encoded}?="
    if any(c in SPECIALS for c in name) or name != " ".join(name.split()):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def add_missing(message: bytes, sender: str, full_name: str, hostname: str, now: float) -> bytes:
    """Add From:, Date: and Message-ID: when absent (sendmail and cleanup both call this).

    From: is the envelope sender (MAILER-DAEMON@hostname for the null sender), with
    full_name as its display name.
    """
    fields, end = parse(message)
    present = {n for n, _ in fields}
    eol = eol_of(message)
    added: list[str] = []
    if b"from" not in present:
        addr = sender or f"MAILER-DAEMON@{hostname}"
        name = " ".join(full_name.split())
        added.append(f"From: {display_name(name)} <{addr}>" if name else f"From: {addr}")
    if b"date" not in present:
        added.append("Date: " + format_date(now))
    if b"message-id" not in present:
        added.append("Message-ID: " + make_message_id(hostname, now))
    if not added:
        return message
    head = message[:end]
    if head and not head.endswith(b"\n"):
        head += eol
    rest = message[end:]
    if not rest.startswith((b"\r\n", b"\n")):
        rest = eol + rest  # no blank line yet (no headers, or a body glued to them)
    return head + b"".join(a.encode() + eol for a in added) + rest


def rewrite_from(message: bytes, rewrite: "Callable[[str], str]") -> bytes:
    """Replace the From: address by rewrite(address), keeping its display name.

    Cron writes `From: root (Cron Daemon)`; the relay and DMARC need a real
    domain there, the same one the envelope sender is rewritten to.
    """
    fields, end = parse(message)
    for i, (name, raw) in enumerate(fields):
        if name != b"from":
            continue
        text = value(raw)
        try:
            addrs = parse_address_list(text)
        except MessageError:
            return message
        new = rewrite(addrs[0]) if len(addrs) == 1 else ""
        if not new or new == addrs[0]:
            return message
        phrase = " ".join(_phrase(text).split())
        line = f"From: {display_name(phrase)} <{new}>" if phrase else f"From: {new}"
        fields[i] = (name, line.encode() + eol_of(message))
        return b"".join(r for _, r in fields) + message[end:]
    return message


def _phrase(text: str) -> str:
    """The display name of `Name <a@b>` or the comment of `a@b (Name)`."""
    if "<" in text:
        return text[: text.index("<")].strip().strip('"').replace('\\"', '"')
    if "(" in text and ")" in text:
        return text[text.index("(") + 1 : text.rindex(")")]
    return ""


def from_domain(message: bytes) -> str:
    """The domain of the From: header's (first) address, lower-cased; "" if none."""
    for text in get_all(message, "from"):
        try:
            addrs = parse_address_list(text)
        except MessageError:
            return ""
        if addrs:
            return addrs[0].rpartition("@")[2].lower().rstrip(".") if "@" in addrs[0] else ""
    return ""
