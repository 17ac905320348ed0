"""Spool files: a big message's bytes on disk in the queue's tmp/ while it is received and cleaned.

A message over SMALL bytes is never held whole in memory: SMTP's DATA writes it to
`tmp/<random>.data.spool`, cleanup streams its body into `tmp/<qid>.spool`, and the commit
thread copies that into the queue file with the kernel's copy. Every name ends in SUFFIX,
so whatever a crash leaves behind is recognisably not a queue file: nothing was
acknowledged for it, and the queue's recovery removes it at start.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from agent import durable
from agent.errors import NoSpaceError, TempError

SUFFIX = ".spool"
SMALL = 256 << 10  # messages up to this size stay in memory: the common case, as fast as before
FLUSH = 64 << 10  # DATA's lines are written in pieces of about this size


class Spool(NamedTuple):
    """`size` bytes in the file at `path`, which whoever holds this removes when done."""

    path: str
    size: int

    def discard(self) -> None:
        unlink_quiet(self.path)


class Spooled(NamedTuple):
    """A message as its first bytes (`head`) in memory and the rest in a spool file."""

    head: bytes
    body: Spool

    @property
    def size(self) -> int:
        return len(self.head) + self.body.size


def spool_error(exc: OSError) -> TempError:
    """Why a spool file could not be written, as the client's temporary failure."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError("insufficient queue space; try again later")
    return TempError(f"cannot write spool file: {exc.strerror or exc}")


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def create(path: str) -> int:
    """A new spool file, exclusively created, 0600, open for writing. Never fsynced: nothing
    is acknowledged until its bytes are in a queue file, which is."""
    return durable.create(path, 0o600)


class DataSink:
    """DATA's content as it arrives: in memory up to SMALL bytes, beyond that in a spool file.

    `finish()` gives the bytes, or the Spool the caller then owns; `discard()` drops either.
    """

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = tmpdir
        self.parts: list[bytes] = []
        self.size = 0
        self._pending = 0
        self._fd = -1
        self.path = ""
        self.error: TempError | None = None  # set by the caller when a write failed

    def add(self, line: bytes) -> bool:
        """Append; True when a piece went to disk (the caller may then let others run)."""
        self.parts.append(line)
        self.size += len(line)
        self._pending += len(line)
        if self._pending >= FLUSH and (self._fd >= 0 or self.size > SMALL):
            self._flush()
            return True
        return False

    def _flush(self) -> None:
        if self._fd < 0:
            self.path = os.path.join(self.tmpdir, os.urandom(8).hex().upper() + ".data" + SUFFIX)
            self._fd = create(self.path)
        durable.write_all(self._fd, b"".join(self.parts))
        self.parts.clear()
        self._pending = 0

    def finish(self) -> bytes | Spool:
        if self._fd < 0:
            data = b"".join(self.parts)
            self.parts.clear()
            return data
        try:
            self._flush()
        finally:
            os.close(self._fd)
            self._fd = -1
        return Spool(self.path, self.size)

    def discard(self) -> None:
        self.parts.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path:
            unlink_quiet(self.path)
