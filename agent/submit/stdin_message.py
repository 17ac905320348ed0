"""A big message as sendmail reads it: a chunk at a time, each made CRLF while the next is
read, the header fields split off into the first part, and the rest kept as the chunks.

Read whole, made CRLF, given its missing fields and framed for the socket or the maildrop, a
big message used to cost sendmail several times its size; held as chunks it is held once, and
the writers send or write the parts as they are. sendmail imports this module only for a
message over its CHUNK (agent.submit.sendmail.read_message), so the usual small one pays nothing.
"""

from agent.errors import MessageError, TooBigError
from agent.mail import headers

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is dear on the fast path
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def read_rest(first: bytes, rest: "Iterator[bytes]", limit: int) -> list[bytes]:
    """The message whose first piece sendmail read already, `rest` the pieces still to come:
    CRLF parts, the first holding all its header fields (what agent.submit.submission.normalize
    would make of it whole)."""
    watch = _NulWatch(_read(first, rest, limit))
    crlf = list(_to_crlf(_without_from_line(watch)))
    if watch.seen:  # after the size limit's error, as when the message was checked whole
        raise MessageError("message contains NUL bytes")
    return _split(crlf)


def _read(first: bytes, rest: "Iterator[bytes]", limit: int) -> "Iterator[bytes]":
    """`first`, then the rest of stdin as sendmail's reader hands it out (agent.submit.sendmail.pieces)."""
    size = len(first)
    yield first
    for chunk in rest:
        size += len(chunk)
        yield chunk
    if size > limit:
        raise TooBigError(f"message exceeds the size limit of {limit} bytes (limits.max_message_size)")


class _NulWatch:
    """The chunks, passed on; `seen` once one held a NUL byte."""

    __slots__ = ("chunks", "seen")

    def __init__(self, chunks: "Iterable[bytes]") -> None:
        self.chunks = iter(chunks)
        self.seen = False

    def __iter__(self) -> "_NulWatch":
        return self

    def __next__(self) -> bytes:
        chunk = next(self.chunks)
        self.seen = self.seen or b"\0" in chunk
        return chunk


def _without_from_line(chunks: "Iterator[bytes]") -> "Iterator[bytes]":
    start = b""
    for chunk in chunks:
        start += chunk
        if len(start) >= 5:  # "From " must be seen whole
            break
    if start.startswith(b"From "):
        nl = start.find(b"\n")
        while nl < 0:
            start = next(chunks, b"\n")  # the message ends in it: nothing is left
            nl = start.find(b"\n")
        start = start[nl + 1 :]
    yield start
    yield from chunks


def _to_crlf(chunks: "Iterable[bytes]") -> "Iterator[bytes]":
    carry = b""
    for raw in chunks:
        chunk = carry + raw
        # a CR at the end may be the first half of a CR LF: it waits for the next chunk
        carry = b"\r" if chunk.endswith(b"\r") else b""
        if chunk := headers.to_crlf(chunk[: len(chunk) - len(carry)]):
            yield chunk
    if carry:
        yield b"\r\n"


def _split(crlf: list[bytes]) -> list[bytes]:
    """The header fields (and the blank line after them) as the first part, the rest after it.
    headers.parse decides where they end, reading as few chunks as decide it: the line it
    stops at must be complete (a cut one may look like anything)."""
    n = 1
    prefix = crlf[0] if crlf else b""
    end = headers.parse(prefix)[1]
    while n < len(crlf) and (end == len(prefix) or prefix.find(b"\n", end) < 0):
        n = min(2 * n, len(crlf))  # doubling: a long header block costs a few joins, not one per chunk
        prefix = b"".join(crlf[:n])
        end = headers.parse(prefix)[1]
    if prefix.startswith(b"\r\n", end):
        end += 2  # the blank line stays with the fields (headers' functions then keep it)
    rest = prefix[end:] if end < len(prefix) else b""
    return [prefix[:end], rest, *crlf[n:]] if rest else [prefix[:end], *crlf[n:]]


def longest_line(parts: list[bytes]) -> int:
    """The longest line's length with its CR (as max(map(len, m.split(b"\\n"))) on the joined
    message), a part at a time."""
    longest = run = 0
    for part in parts:
        lines = part.split(b"\n")
        if len(lines) == 1:
            run += len(part)
            continue
        longest = max(longest, run + len(lines[0]), *map(len, lines[1:-1]))
        run = len(lines[-1])
    return max(longest, run)
