"""A big message streamed through cleanup's byte checks, a chunk at a time.

Cleanup holds a big message's header block in memory (bounded by MAX_HEAD) and streams its
body: line endings made CRLF, NUL refused, lines over 998 octets noticed, the DKIM body
hash computed, and the result written to a spool file (agent.queue.spool). The per-byte work
runs in the threads of `executor`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, TypeVar

from agent import durable
from agent.dkim.body_hash import RelaxedBodyHash
from agent.errors import MessageError
from agent.mail import headers
from agent.mail.longlines import MAX_LINE
from agent.queue import spool
from agent.queue.queue_file import FormatError

CHUNK = 256 << 10
MAX_HEAD = 1 << 20  # a header block (with the message's first line after it) larger is refused

T = TypeVar("T")
Read = Callable[[int], bytes]  # the message's raw bytes, up to n at a time; b"" at the end

# Two threads: a big message's cleanup takes tens of ms of CPU, and a second one keeps a
# small stream of big messages from queueing behind another. Not asyncio's default pool:
# the more threads run Python beside the event loop, the more they slow it (GIL).
_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-agent-cleanup")


async def in_thread(fn: Callable[[], T], discard: Callable[[T], None]) -> T:
    """`fn()` in cleanup's threads. If the caller is cancelled meanwhile (its client went
    away), what `fn` still returns is handed to `discard` (it holds a spool file)."""
    job = _EXECUTOR.submit(fn)
    try:
        return await asyncio.wrap_future(job)
    except asyncio.CancelledError:
        job.add_done_callback(lambda done: _discard_result(done, discard))
        raise


def _discard_result(done: Future[T], discard: Callable[[T], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        discard(done.result())


class Crlf:
    """headers.to_crlf over a stream (a CR at the end of a chunk waits for the next one's
    first byte), refusing NUL as cleanup does for a whole message."""

    def __init__(self) -> None:
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        if b"\0" in data:
            raise MessageError("message contains NUL bytes")
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        if data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
            return data  # CRLF already: SMTP's usual case, no copy
        return headers.to_crlf(data)

    def finish(self) -> bytes:
        cr, self._cr = self._cr, False
        return b"\r\n" if cr else b""


class LongLines:
    """Whether CRLF text fed in pieces has a line over 998 octets (longlines.has_long_line)."""

    def __init__(self) -> None:
        self.run = 0  # length of the current, unterminated line
        self.found = False

    def feed(self, data: bytes) -> None:
        if self.found or not data:
            return
        lines = data.split(b"\n")
        first = self.run + len(lines[0])
        if len(lines) == 1:
            self.run = first
            self.found = first > MAX_LINE + 1  # the CR of its CRLF may still be in it
            return
        longest = max(first, max(map(len, lines[1:-1]), default=0))
        self.run = len(lines[-1])
        self.found = longest > MAX_LINE + 1 or self.run > MAX_LINE + 1

    def finish(self) -> bool:
        """Call after the last piece; the last line has no CRLF, so its whole length counts."""
        return self.found or self.run > MAX_LINE


class Head(NamedTuple):
    """A message's header block, CRLF, and what was read past it."""

    head: bytes  # the header fields, with the blank line after them if there is one
    blank: bool  # whether a blank line ends them (else the body is glued on, or there is none)
    rest: bytes  # normalised bytes after `head`, the start of the body


def read_head(read: Read, crlf: Crlf) -> Head:
    """Read until the header block's end is certain (MessageError beyond MAX_HEAD)."""
    buf = b""
    while True:
        raw = read(CHUNK)
        buf += crlf.feed(raw) if raw else crlf.finish()
        end = headers.parse(buf)[1]
        line_end = buf.find(b"\n", end)
        if raw and line_end < 0:  # the line that ends the header block is not complete yet
            if len(buf) > MAX_HEAD:
                raise MessageError(f"header block larger than {MAX_HEAD} bytes")
            continue
        blank = buf.startswith(b"\r\n", end)
        cut = end + 2 if blank else end
        if cut > MAX_HEAD:
            raise MessageError(f"header block larger than {MAX_HEAD} bytes")
        return Head(buf[:cut], blank, buf[cut:])


class Body(NamedTuple):
    size: int
    body_hash: bytes  # DKIM relaxed, base64
    long_lines: bool


def spool_body(first: bytes, read: Read, crlf: Crlf, path: str) -> Body:
    """Write the body (`first`, then the rest of `read` through `crlf`) to a new spool file
    at `path`, checking it on the way; the file is removed again if anything fails."""
    try:
        fd = spool.create(path)
    except OSError as exc:
        raise spool.spool_error(exc) from None
    try:
        hasher, lines, size = RelaxedBodyHash(), LongLines(), 0
        data, more = first, True
        while True:
            if data:
                lines.feed(data)
                hasher.update(data)
                try:
                    durable.write_all(fd, data)
                except OSError as exc:
                    raise spool.spool_error(exc) from None
                size += len(data)
            if not more:
                break
            raw = read(CHUNK)
            more = bool(raw)
            data = crlf.feed(raw) if more else crlf.finish()
    except BaseException:
        os.close(fd)
        spool.unlink_quiet(path)
        raise
    os.close(fd)
    return Body(size, hasher.digest(), lines.finish())


def file_reader(fd: int, offset: int, size: int) -> Read:
    """Exactly `size` bytes of `fd` from `offset` (FormatError if the file is shorter)."""
    pos, end = offset, offset + size

    def read(n: int) -> bytes:
        nonlocal pos
        if pos >= end:
            return b""
        data = os.pread(fd, min(n, end - pos), pos)
        if not data:
            raise FormatError(f"file shrank while being read ({end - pos} bytes missing)")
        pos += len(data)
        return data

    return read
