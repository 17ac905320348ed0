"""A queued message to relay or bounce, read from its queue file a chunk at a time.

Relaying a message must not cost its size in memory, let alone several times over (the message
and its dot-stuffed copy, on each connection): a big message stays in its queue file, opened
read-only without following links, checked to end with the end marker exactly where its
size says, and read a chunk at a time while it is sent. The open file is what gets sent, even
if `queue delete` unlinks it meanwhile. A small message (the common case) is read whole in
one read, as before: cheaper than a file kept open and read in pieces.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from types import TracebackType

from agent.queue import queue_file

CHUNK = 1 << 16
SMALL = 1 << 18  # queue files up to this size are read whole


class MessageSource:
    """The message bytes of one queue file: in memory (`data`), or `size` bytes at `offset` of the
    open file `fd`. Close it (or use `with`) when done."""

    __slots__ = ("_ascii", "data", "fd", "offset", "size")

    def __init__(self, data: bytes | None = None, fd: int = -1, offset: int = 0, size: int = 0) -> None:
        self.data = data
        self.fd = fd
        self.offset = offset
        self.size = len(data) if data is not None else size
        self._ascii: bool | None = None

    @classmethod
    def from_bytes(cls, message: bytes) -> MessageSource:
        return cls(message)

    @property
    def ascii(self) -> bool:
        """Only 7-bit bytes (no BODY=8BITMIME needed). A file's needs scan() first."""
        if self._ascii is None:
            if self.data is None:
                raise ValueError("scan() a message read from its file first")
            self._ascii = self.data.isascii()
        return self._ascii

    @property
    def scanned(self) -> bool:
        return self.data is not None or self._ascii is not None

    def scan(self) -> None:
        """Read the file once to learn whether it is 7-bit (blocking: for a thread)."""
        self._ascii = all(chunk.isascii() for chunk in self.chunks())

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        if self.data is not None:
            if self.data:
                yield self.data
            return
        pos, end = self.offset, self.offset + self.size
        while pos < end:
            chunk = os.pread(self.fd, min(size, end - pos), pos)
            if not chunk:
                raise queue_file.FormatError("queue file shrank while it was read")
            pos += len(chunk)
            yield chunk

    def prefix(self, limit: int) -> bytes:
        """At most the first `limit` bytes of the message."""
        if self.data is not None:
            return self.data[:limit]
        return _pread_all(self.fd, min(limit, self.size), self.offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MessageSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_queued(path: str) -> tuple[queue_file.Envelope, MessageSource]:
    """The envelope and message of a queue file. FormatError for a file that is not one, or not
    complete; OSError (FileNotFoundError: delivered or deleted meanwhile) as the open raises it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # queue files are never links: someone put this one there
            raise queue_file.FormatError("queue file is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise queue_file.FormatError("queue file is not a regular file")
        if st.st_size <= SMALL:
            env, message = queue_file.decode(_pread_all(fd, st.st_size, 0))
            os.close(fd)
            return env, MessageSource(message)
        env, start, size = _envelope(fd)
        if (
            st.st_size != start + size + len(queue_file.END)
            or os.pread(fd, len(queue_file.END), start + size) != queue_file.END
        ):
            raise queue_file.FormatError("queue file is incomplete (no end marker)")
    except BaseException:
        os.close(fd)
        raise
    return env, MessageSource(fd=fd, offset=start, size=size)


def _envelope(fd: int) -> tuple[queue_file.Envelope, int, int]:
    """Envelope, where the message starts, its declared size: reading only the header block."""
    head = b""
    while b"\n\n" not in head and len(head) < queue_file.MAX_HEADER:
        more = os.pread(fd, CHUNK, len(head))
        if not more:
            break
        head += more
    block, start = queue_file.split_header(head)
    env, size = queue_file.parse_header(block)
    return env, start, size


def _pread_all(fd: int, limit: int, offset: int) -> bytes:
    """Up to `limit` bytes from `offset`, fewer only at the end of the file."""
    parts = []
    while limit > 0:
        part = os.pread(fd, limit, offset)
        if not part:
            break
        parts.append(part)
        limit -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
