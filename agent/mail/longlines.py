"""Make a message safe for SMTP's 998-octet line limit (RFC 5322 2.1.1) before it is signed.

A relay that breaks a long line itself would invalidate our DKIM signature, so we fix
lines here, before signing (RFC 6376 5.3): long header lines are folded, a body part
with long lines is re-encoded (text: quoted-printable; other leaves: base64), and
everything we did not need to touch is kept byte for byte. MIME structure is walked
on the raw bytes; the stdlib `email` package only reads a part's header fields.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from agent.errors import MessageError

MAX_LINE = 998
SOFT_LINE = 78  # where we prefer to fold a header we have to fold anyway
ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc", "resent-bcc"}
)
_EXACT_LONG = re.compile(rb"(?m)^[^\r\n]{999}")
_HEADER_PARSER = BytesHeaderParser(policy=compat32)


def has_long_line(data: bytes) -> bool:
    if len(data) <= MAX_LINE:
        return False
    # split() runs at memory speed; a regex scan of 25 MB takes several times longer.
    longest = max(map(len, data.split(b"\n")))
    if longest <= MAX_LINE + 1:  # 998 octets plus the CR of CRLF
        return longest == MAX_LINE + 1 and _EXACT_LONG.search(data) is not None
    return True


def make_safe(message: bytes) -> bytes:
    """The message with no line over 998 octets; the same object when there was none."""
    if not has_long_line(message):
        return message
    fixed = _fix_entity(message, top=True, default_type="text/plain")
    if has_long_line(fixed):
        raise MessageError("line longer than 998 octets that could not be re-encoded; fix the message")
    return fixed


def _split(entity: bytes) -> tuple[bytes, bytes | None]:
    """(header block with its last CRLF, body) or (everything, None) when there is no body."""
    if entity.startswith(b"\r\n"):
        return b"", entity[2:]
    end = entity.find(b"\r\n\r\n")
    if end < 0:
        return entity, None
    return entity[: end + 2], entity[end + 4 :]


def _fix_entity(entity: bytes, top: bool, default_type: str) -> bytes:
    head, body = _split(entity)
    if has_long_line(head):
        head = fold_headers(head)
    if body is None:
        return head
    if not has_long_line(body):
        return head + b"\r\n" + body
    info = _HEADER_PARSER.parsebytes(head)
    info.set_default_type(default_type)
    ctype = info.get_content_type()
    boundary = info.get_boundary()
    if ctype.startswith("multipart/") and boundary:
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        return head + b"\r\n" + _fix_multipart(body, boundary.encode("ascii", "replace"), child_default)
    head, body = _fix_leaf(head, body, info, top)
    return head + b"\r\n" + body


def _fix_multipart(body: bytes, boundary: bytes, child_default: str) -> bytes:
    delim = re.compile(rb"(?m)^--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r$|\Z)")
    out: list[bytes] = []
    part_start: int | None = None  # None: still in the preamble
    closed = False
    for m in delim.finditer(body):
        if part_start is None:
            out.append(_hard_wrap(body[: m.start()]))  # preamble: ignored by readers
        else:
            out.append(_fix_part(body[part_start : m.start()], child_default))
        line_end = body.find(b"\n", m.end())
        part_start = len(body) if line_end < 0 else line_end + 1
        out.append(body[m.start() : part_start])
        if m.group(1):
            closed = True
            break
    if part_start is None:
        raise MessageError("line longer than 998 octets in a multipart message with no boundary line")
    rest = body[part_start:]
    # after the close delimiter comes the epilogue (ignored); without one, the last part runs on
    out.append(_hard_wrap(rest) if closed else _fix_entity(rest, top=False, default_type=child_default))
    return b"".join(out)


def _fix_part(chunk: bytes, default_type: str) -> bytes:
    # the CRLF before a delimiter line belongs to the delimiter, not to the part
    if chunk.endswith(b"\r\n"):
        return _fix_entity(chunk[:-2], top=False, default_type=default_type) + b"\r\n"
    return _fix_entity(chunk, top=False, default_type=default_type)


def _hard_wrap(text: bytes) -> bytes:
    if not has_long_line(text):
        return text
    lines = text.split(b"\r\n")
    return b"\r\n".join(
        b"\r\n".join(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)) or b"" for line in lines
    )


def _fix_leaf(head: bytes, body: bytes, info: Message, top: bool) -> tuple[bytes, bytes]:
    cte = str(info.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    maintype = info.get_content_maintype()
    if cte == "base64":
        # only the line length is wrong: same encoding, same content
        return head, _b64_lines(_b64_decode(body))
    if maintype in ("message", "multipart") or cte not in ("7bit", "8bit", "binary", "quoted-printable"):
        raise MessageError(
            f"line longer than 998 octets in a non-text part ({info.get_content_type()}, {cte}); "
            "encode that part as base64 before sending"
        )
    raw = binascii.a2b_qp(body) if cte == "quoted-printable" else body
    if maintype == "text":
        encoded, new_cte = qp_encode(raw), "quoted-printable"
    else:
        encoded, new_cte = _b64_lines(raw), "base64"
    head = set_header(head, "Content-Transfer-Encoding", new_cte)
    if top:
        head = _declare_mime(head, info, raw)
    return head, encoded


def _declare_mime(head: bytes, info: Message, raw: bytes) -> bytes:
    if info.get("MIME-Version") is None:
        head = set_header(head, "MIME-Version", "1.0")
    if info.get("Content-Type") is None and not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return head
        # without it, the 8-bit text we now encode would read as us-ascii
        head = set_header(head, "Content-Type", "text/plain; charset=utf-8")
    return head


def qp_encode(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) with CRLF line breaks kept as hard breaks."""
    out = []
    for line in data.split(b"\r\n"):
        # istext=False: a stray CR or LF inside a line is encoded, never taken for a break
        out.append(
            binascii.b2a_qp(line, quotetabs=False, istext=False, header=False).replace(b"=\n", b"=\r\n")
        )
    return b"\r\n".join(out)


def _b64_decode(body: bytes) -> bytes:
    compact = b"".join(body.split())
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4))
    except binascii.Error:
        raise MessageError("line longer than 998 octets in a part that is not valid base64") from None


def _b64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def set_header(head: bytes, name: str, value: str) -> bytes:
    """Replace every `name` field (with its continuation lines) by one at the end of the block."""
    lines = head.split(b"\r\n")
    key = name.lower().encode("ascii")
    kept: list[bytes] = []
    dropping = False
    for line in lines[:-1]:  # head ends with CRLF, so the last item is empty
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == key
        if not dropping:
            kept.append(line)
    kept.append(f"{name}: {value}".encode("ascii"))
    return b"".join(line + b"\r\n" for line in kept)


def fold_headers(head: bytes) -> bytes:
    out = []
    field = ""
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            field = line.split(b":", 1)[0].decode("ascii", "replace").strip()
        out.append(fold_line(line, field) if len(line) > MAX_LINE else line)
    return b"\r\n".join(out)


def fold_line(line: bytes, field: str) -> bytes:
    """Fold one physical header line at whitespace (or after commas in address lists).

    Each piece takes the last break point within SOFT_LINE of where it starts, else the
    first one within MAX_LINE. Both are found by bisection in the sorted break points,
    so the work grows with the line's length, not with its square: any local user can
    submit a long header, and the daemon folds it on its event loop.
    """
    positions, commas = _break_points(line, _first_content(line), field.lower() in ADDRESS_HEADERS)
    pieces: list[bytes] = []
    start, prefix = 0, b""
    while len(prefix) + len(line) - start > MAX_LINE:
        after = bisect_right(positions, start + SOFT_LINE - len(prefix))  # first break past the soft limit
        if after and positions[after - 1] > start:
            k = after - 1  # the last break that keeps the piece within SOFT_LINE
        elif after < len(positions) and positions[after] - start + len(prefix) <= MAX_LINE:
            k = after  # none that short: the first that keeps it within MAX_LINE
        else:
            raise MessageError(f"header {field} has a line longer than 998 octets with no place to fold it")
        pieces.append(prefix + line[start : positions[k]])
        start, prefix = positions[k], (b" " if positions[k] in commas else b"")
    pieces.append(prefix + line[start:])
    return b"\r\n".join(pieces)


def _first_content(line: bytes) -> int:
    """Index after which a fold leaves real content on the line before it."""
    if line[:1] in (b" ", b"\t"):
        return len(line) - len(line.lstrip(b" \t"))
    colon = line.find(b":")
    rest = line[colon + 1 :]
    return colon + 1 + len(rest) - len(rest.lstrip(b" \t"))


_WSP_AFTER_TEXT = re.compile(rb"(?<=[^ \t])[ \t]")  # the first blank of each run of blanks
_ADDRESS_SPECIALS = re.compile(rb'[\\"() \t,]')  # what moves the quote/comment state, or breaks


def _break_points(line: bytes, content_from: int, commas: bool) -> tuple[list[int], set[int]]:
    """Where a fold may go (sorted: fold before line[index]), and which of them follow a
    comma outside quotes and comments (that fold inserts a space there).

    The scan visits only the bytes that matter (regex searches run in C): blanks, and in
    address headers the quote, comment, escape and comma characters.
    """
    if not commas:
        return [m.start() for m in _WSP_AFTER_TEXT.finditer(line, content_from + 1)], set()
    points: list[int] = []
    after_comma: set[int] = set()
    quoted, depth, escaped_at = False, 0, -1
    for m in _ADDRESS_SPECIALS.finditer(line, content_from):
        i = m.start()
        c = line[i]
        if i == escaped_at:
            pass  # the character after a backslash in a quoted string or comment
        elif c == 0x5C and (quoted or depth):  # backslash
            escaped_at = i + 1
        elif c == 0x22 and not depth:  # "
            quoted = not quoted
        elif c == 0x28 and not quoted:  # (
            depth += 1
        elif c == 0x29 and not quoted and depth:  # )
            depth -= 1
        if c in (0x20, 0x09):
            if i > content_from and line[i - 1] not in (0x20, 0x09):
                points.append(i)
        elif c == 0x2C and not quoted and not depth and line[i + 1 : i + 2] not in (b"", b" ", b"\t"):
            points.append(i + 1)
            after_comma.add(i + 1)
    return points, after_comma
