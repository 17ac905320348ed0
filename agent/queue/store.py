"""The only code that touches the queue directories.

Durability: a message is acknowledged (exit 0 / 250) only after
tmp/ID is written, fsynced, renamed to msg/ID and msg/ is fsynced. A crash
before the rename leaves a file in tmp/ that nobody acknowledged, and whose
submitter still has the message; recovery removes it with a log line.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agent import durable
from agent.errors import NoSpaceError, TempError
from agent.queue import queue_file, state_file
from agent.queue.ids import new_id, valid_id
from agent.queue.spool import Spooled

SUBDIRS = ("tmp", "msg", "state", "corrupt")
DELETED_PREFIX = "deleted."  # `queue delete --all` moves msg/ and state/ here, to be removed
READ_CHUNK = 1 << 16


def write_message(path: str, env: queue_file.Envelope, message: bytes | Spooled) -> durable.Writer:
    """A queue file at `path`, written, not yet fsynced; a Spooled body is appended from its file,
    not read into memory."""
    writer = durable.Writer(path)
    if isinstance(message, bytes):
        writer.write(queue_file.encode(env, message))  # removes the file if it fails
        return writer
    try:
        writer.write(queue_file.encode_header(env, message.size) + message.head)
        append_file(writer.fd, message.body.path, message.body.size)
        writer.write(queue_file.END)
    except BaseException:
        writer.abort()
        raise
    return writer


def append_file(fd: int, src_path: str, size: int) -> None:
    """Append exactly `size` bytes of the file at `src_path` to `fd`: copy_file_range (the
    kernel copies, no Python buffers; reflinks where the file system can), else chunks."""
    src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(src).st_size != size:
            raise OSError(errno.EIO, f"spool file {os.path.basename(src_path)} is not {size} bytes")
        left = size
        try:
            while left > 0:
                n = os.copy_file_range(src, fd, left)
                if n == 0:
                    break
                left -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        while left > 0:  # copy_file_range unavailable (or made no progress): read and write
            chunk = os.read(src, min(left, READ_CHUNK))
            if not chunk:
                raise OSError(errno.EIO, f"spool file {os.path.basename(src_path)} ended early")
            durable.write_all(fd, chunk)
            left -= len(chunk)
    finally:
        os.close(src)


def _tmp_kind(name: str) -> str:
    """What a file left in tmp/ was, from its name, for the log line."""
    base, dot, ext = name.partition(".")
    if valid_id(base) and not dot:
        return "a queue file being entered"
    if valid_id(base) and "spool" in ext:
        return "a message being received (spool)"
    return "an unfinished temporary file"


def _shown(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name[:64])


def _remove_tree(path: str) -> None:
    """Unlink a file; a directory (none is made here, but tmp/ is ours to clean) with its contents."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _write_error(exc: OSError) -> TempError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"insufficient queue space: {exc.strerror}; try again later")
    return TempError(f"cannot write queue file: {exc.strerror}")


@dataclass(frozen=True)
class Entry:
    """One queued message as listings show it."""

    qid: str
    envelope: queue_file.Envelope
    state: state_file.State
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
        """Made when missing; refused (ConfigError) when another user owns or may write them."""
        from agent.queue import dir_safety

        old = os.umask(0o077)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            for path in (self.path, *(os.path.join(self.path, sub) for sub in SUBDIRS)):
                if path != self.path:
                    os.makedirs(path, mode=0o700, exist_ok=True)
                st = os.lstat(path) if path != self.path else os.stat(path)  # queue.path may be a link
                dir_safety.require_directory("queue directory", path, st, "queue.path")
                dir_safety.require_owner("queue directory", path, st, root_ok=False, recursive=True)
                dir_safety.require_not_writable_by_others("queue directory", path, st)
            os.chmod(self.path, 0o700)
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
                durable.write(path, secret, exclusive=True)
            except FileExistsError:
                return self.key()
            return secret

    def recover(self) -> list[str]:
        """Remove what a crash left in tmp/; drop orphan state files. One log line per file.

        Nothing in tmp/ was ever acknowledged: its 250 or exit 0 comes only after the rename
        to msg/. Its submitter still has the message (an SMTP client retries; a maildrop file
        stays in the maildrop until its queue file is in msg/), so removing it loses nothing,
        and keeping it would only leave a copy of mail that is delivered anyway. msg/ files
        were fsynced before their rename, so they are complete; they are checked when read,
        and what fails that check goes to corrupt/ (quarantine).
        """
        notes = []
        for name in os.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            try:
                size = os.lstat(path).st_size
                _remove_tree(path)
            except FileNotFoundError:
                continue
            notes.append(f"tmp/{_shown(name)}: removed {_tmp_kind(name)} ({size} bytes), never acknowledged")
        for name in os.listdir(self.path):
            if name.startswith(DELETED_PREFIX):  # `queue delete --all` whose removal was cut short
                _remove_tree(os.path.join(self.path, name))
                notes.append(f"{_shown(name)}: removed what `queue delete --all` had deleted")
        msgs = set(os.listdir(self.msg))
        for name in os.listdir(self.statedir):
            if name.endswith(".tmp") or name not in msgs:
                os.unlink(os.path.join(self.statedir, name))
        return notes

    def _quarantine(self, src: str, name: str) -> str:
        dst = os.path.join(self.corrupt, f"{name}.{int(time.time())}")
        os.rename(src, dst)
        return os.path.basename(dst)

    def quarantine(self, qid: str, reason: str) -> str:
        """Move a queue file that fails validation to corrupt/ (kept for a human); the log line."""
        kept = self._quarantine(self.msg_path(qid), qid)
        self._unlink_quiet(self.state_path(qid))
        return f"{qid}: queue file moved to corrupt/{kept}: {reason}"

    # -- entering -------------------------------------------------------------
    def check_space(self) -> None:
        if not self.min_free:
            return
        st = os.statvfs(self.path)
        if st.f_bavail * st.f_frsize < self.min_free:
            raise NoSpaceError("insufficient queue space; try again later")

    def enter(self, env: queue_file.Envelope, message: bytes, qid: str | None = None) -> str:
        """Durably store a message; return its id. Idempotent for a given qid."""
        result = self.enter_batch([(env, message, qid or new_id())])[0]
        if isinstance(result, TempError):
            raise result
        return result

    def enter_batch(
        self, items: list[tuple[queue_file.Envelope, bytes | Spooled, str]]
    ) -> list[str | TempError]:
        """Durably store messages that arrived together; per item its id or why not.

        Each file is fsynced before its rename, but written before any is fsynced: on
        ext4 the first fsync commits the journal for all of them, and msg/ is fsynced
        once per batch. A batch of one costs what a single enter always did. A Spooled
        message's body is copied from its spool file by the kernel (the caller removes it).
        """
        results: list[str | TempError] = []
        written: list[tuple[int, durable.Writer, str]] = []  # (index, file, qid)
        for i, (env, message, qid) in enumerate(items):
            results.append(qid)
            if os.path.exists(self.msg_path(qid)):
                continue  # entered before (a retried commit): idempotent
            try:
                written.append((i, write_message(os.path.join(self.tmp, qid), env, message), qid))
            except OSError as exc:
                results[i] = _write_error(exc)
        renamed = []
        for i, writer, qid in written:
            try:
                writer.commit(self.msg_path(qid), sync_dir=False)  # msg/ once for the batch, below
                renamed.append(i)
            except OSError as exc:
                results[i] = _write_error(exc)
        if renamed:
            try:
                durable.fsync_dir(self.msg)
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

    def read(self, qid: str) -> tuple[queue_file.Envelope, bytes]:
        with open(self.msg_path(qid), "rb") as fh:
            return queue_file.decode(fh.read())

    def read_envelope(self, qid: str) -> tuple[queue_file.Envelope, int]:
        """Envelope and message size without reading the message itself."""
        with open(self.msg_path(qid), "rb") as fh:
            head = fh.read(READ_CHUNK)
            while b"\n\n" not in head and len(head) < queue_file.MAX_HEADER:
                more = fh.read(READ_CHUNK)
                if not more:
                    break
                head += more
        block, _ = queue_file.split_header(head)
        return queue_file.parse_header(block)

    def read_state(self, qid: str) -> state_file.State:
        try:
            with open(self.state_path(qid), "rb") as fh:
                return state_file.decode_state(fh.read())
        except FileNotFoundError:
            return state_file.State()

    def has_state(self) -> set[str]:
        return set(os.listdir(self.statedir))

    def entries(self) -> Iterator[Entry]:
        with_state = self.has_state()
        for qid in sorted(self.ids()):
            try:
                env, size = self.read_envelope(qid)
                state = self.read_state(qid) if qid in with_state else state_file.State()
            except (OSError, queue_file.FormatError):
                continue  # vanished (delivered) or broken: the daemon quarantines it
            yield Entry(qid, env, state, size)

    # -- changing -------------------------------------------------------------
    def write_state(self, qid: str, state: state_file.State) -> None:
        """Atomically replace the state file: one fsync per recorded transaction."""
        durable.write(
            self.state_path(qid), state_file.encode_state(state)
        )  # via ID.tmp, which recovery drops

    def remove(self, qid: str, sync: bool = True) -> None:
        """Forget a finished message: msg first, so a crash leaves at most an orphan state."""
        self._unlink_quiet(self.msg_path(qid))
        self._unlink_quiet(self.state_path(qid))
        if sync:
            durable.fsync_dir(self.msg)

    def exists(self, qid: str) -> bool:
        return os.path.exists(self.msg_path(qid))

    @staticmethod
    def _unlink_quiet(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
