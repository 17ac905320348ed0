"""The only code that touches the queue directories.

Durability: a message is acknowledged (exit 0 / 250) only after
tmp/ID is written, fsynced, renamed to msg/ID and msg/ is fsynced. A crash
before the rename leaves a file in tmp/ that nobody acknowledged; recovery
moves it to corrupt/ rather than deleting mail silently.
"""

from __future__ import annotations

import binascii
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agent import envelope as fmt
from agent import queue_state as qs
from agent.errors import NoSpaceError, TempError

SUBDIRS = ("tmp", "msg", "state", "corrupt")
READ_CHUNK = 1 << 16


def new_id(now: float | None = None) -> str:
    """16 upper-case hex digits: microseconds (sort by arrival) + randomness."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros & 0xFFFFFFFFFFF:011X}{binascii.hexlify(os.urandom(3)).decode()[:5].upper()}"


def valid_id(qid: str) -> bool:
    return len(qid) == 16 and all(c in "0123456789ABCDEF" for c in qid)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str, data: bytes, mode: int = 0o600) -> int:
    """Create `path` exclusively and write `data`; returns the open fd, not yet fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        _discard(fd, path)
        raise
    return fd


def sync_close(fd: int, path: str) -> None:
    """fsync and close a file from write_new; on failure it is removed again."""
    try:
        os.fsync(fd)
    except BaseException:
        _discard(fd, path)
        raise
    os.close(fd)


def _discard(fd: int, path: str) -> None:
    os.close(fd)
    os.unlink(path)


def write_durably(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create `path` exclusively, write, fsync. Raises FileExistsError if present."""
    sync_close(write_new(path, data, mode), path)


def _write_error(exc: OSError) -> TempError:
    return TempError(f"cannot write queue file: {exc.strerror}")


@dataclass(frozen=True)
class Entry:
    """One queued message as listings show it."""

    qid: str
    envelope: fmt.Envelope
    state: qs.State
    size: int


class Queue:
    def __init__(self, path: str, min_free: int = 0) -> None:
        self.path = path
        self.min_free = min_free
        self.tmp = os.path.join(path, "tmp")
        self.msg = os.path.join(path, "msg")
        self.statedir = os.path.join(path, "state")
        self.corrupt = os.path.join(path, "corrupt")
        self._key = b""

    # -- setup and recovery -------------------------------------------------
    def ensure_dirs(self) -> None:
        old = os.umask(0o077)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
            for sub in SUBDIRS:
                os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        finally:
            os.umask(old)

    def key(self) -> bytes:
        """A secret of this queue (0600), created on first use: keys maildrop ids."""
        if self._key:
            return self._key
        path = os.path.join(self.path, "pickup.key")
        try:
            with open(path, "rb") as fh:
                self._key = fh.read()
                return self._key
        except FileNotFoundError:
            secret = os.urandom(32)
            try:
                write_durably(path, secret)
            except FileExistsError:
                return self.key()
            return secret

    def recover(self) -> list[str]:
        """Move never-acknowledged tmp files to corrupt/; drop orphan state files.

        Returns one log line per action. msg/ files were fsynced before their
        rename, so they are complete; they are checked when read.
        """
        notes = []
        for name in os.listdir(self.tmp):
            self._quarantine(os.path.join(self.tmp, name), name)
            notes.append(f"{name}: unacknowledged partial file from a crash moved to corrupt/")
        msgs = set(os.listdir(self.msg))
        for name in os.listdir(self.statedir):
            if name.endswith(".tmp") or name not in msgs:
                os.unlink(os.path.join(self.statedir, name))
        return notes

    def _quarantine(self, src: str, name: str) -> None:
        dst = os.path.join(self.corrupt, f"{name}.{int(time.time())}")
        os.rename(src, dst)

    def quarantine(self, qid: str, reason: str) -> str:
        self._quarantine(self.msg_path(qid), qid)
        self._unlink_quiet(self.state_path(qid))
        return f"{qid}: moved to corrupt/: {reason}"

    # -- entering -------------------------------------------------------------
    def check_space(self) -> None:
        if not self.min_free:
            return
        st = os.statvfs(self.path)
        if st.f_bavail * st.f_frsize < self.min_free:
            raise NoSpaceError("insufficient queue space; try again later")

    def enter(self, env: fmt.Envelope, message: bytes, qid: str | None = None) -> str:
        """Durably store a message; return its id. Idempotent for a given qid."""
        result = self.enter_batch([(env, message, qid or new_id())])[0]
        if isinstance(result, TempError):
            raise result
        return result

    def enter_batch(self, items: list[tuple[fmt.Envelope, bytes, str]]) -> list[str | TempError]:
        """Durably store messages that arrived together; per item its id or why not.

        Each file is fsynced before its rename, but written before any is fsynced: on
        ext4 the first fsync commits the journal for all of them, and msg/ is fsynced
        once per batch. A batch of one costs what a single enter always did.
        """
        results: list[str | TempError] = []
        written: list[tuple[int, int, str]] = []  # (index, fd, qid)
        for i, (env, message, qid) in enumerate(items):
            results.append(qid)
            if os.path.exists(self.msg_path(qid)):
                continue  # entered before (a retried commit): idempotent
            try:
                written.append((i, write_new(os.path.join(self.tmp, qid), fmt.encode(env, message)), qid))
            except OSError as exc:
                results[i] = _write_error(exc)
        renamed = []
        for i, fd, qid in written:
            try:
                sync_close(fd, os.path.join(self.tmp, qid))
                os.rename(os.path.join(self.tmp, qid), self.msg_path(qid))
                renamed.append(i)
            except OSError as exc:
                results[i] = _write_error(exc)
        if renamed:
            try:
                fsync_dir(self.msg)
            except OSError as exc:
                for i in renamed:
                    results[i] = _write_error(exc)
        return results

    # -- reading --------------------------------------------------------------
    def msg_path(self, qid: str) -> str:
        return os.path.join(self.msg, qid)

    def state_path(self, qid: str) -> str:
        return os.path.join(self.statedir, qid)

    def ids(self) -> Iterator[str]:
        with os.scandir(self.msg) as it:
            for e in it:
                if valid_id(e.name):
                    yield e.name

    def read(self, qid: str) -> tuple[fmt.Envelope, bytes]:
        with open(self.msg_path(qid), "rb") as fh:
            return fmt.decode(fh.read())

    def read_envelope(self, qid: str) -> tuple[fmt.Envelope, int]:
        """Envelope and message size without reading the message itself."""
        with open(self.msg_path(qid), "rb") as fh:
            head = fh.read(READ_CHUNK)
            while b"\n\n" not in head and len(head) < fmt.MAX_HEADER:
                more = fh.read(READ_CHUNK)
                if not more:
                    break
                head += more
        block, _ = fmt.split_header(head)
        return fmt.parse_header(block)

    def read_state(self, qid: str) -> qs.State:
        try:
            with open(self.state_path(qid), "rb") as fh:
                return qs.decode_state(fh.read())
        except FileNotFoundError:
            return qs.State()

    def has_state(self) -> set[str]:
        return set(os.listdir(self.statedir))

    def entries(self) -> Iterator[Entry]:
        with_state = self.has_state()
        for qid in sorted(self.ids()):
            try:
                env, size = self.read_envelope(qid)
                st = self.read_state(qid) if qid in with_state else qs.State()
            except (OSError, fmt.FormatError):
                continue  # vanished (delivered) or broken: the daemon quarantines it
            yield Entry(qid, env, st, size)

    # -- changing -------------------------------------------------------------
    def write_state(self, qid: str, st: qs.State) -> None:
        """Atomically replace the state file: one fsync per recorded transaction."""
        tmp = self.state_path(qid) + ".tmp"
        self._unlink_quiet(tmp)
        write_durably(tmp, qs.encode_state(st))
        os.rename(tmp, self.state_path(qid))
        fsync_dir(self.statedir)

    def remove(self, qid: str, sync: bool = True) -> None:
        """Forget a finished message: msg first, so a crash leaves at most an orphan state."""
        self._unlink_quiet(self.msg_path(qid))
        self._unlink_quiet(self.state_path(qid))
        if sync:
            fsync_dir(self.msg)

    def exists(self, qid: str) -> bool:
        return os.path.exists(self.msg_path(qid))

    @staticmethod
    def _unlink_quiet(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
