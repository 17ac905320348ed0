"""Maildrop pickup: files written by other local users are untrusted input.

Each entry is lstat()ed before anything opens it, so a FIFO, device, socket,
directory or symlink is refused without being opened or followed. A regular
file is then opened without following links and must be the same inode, have
one link and a sane size; it is parsed defensively and goes through cleanup
like any submission. Whatever fails is quarantined with a log line; the
daemon keeps running.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from typing import NamedTuple

from agent.errors import AgentError, ConfigError, TempError
from agent.intake import bodystream, quotas
from agent.intake.cleanup import Cleanup, Prepared
from agent.queue import queue_file
from agent.queue.ids import qid_for
from agent.queue.spool import SMALL

log = logging.getLogger("relay-agent")

STALE_TMP = 3600.0  # a sendmail that has not renamed its temp file in an hour died


class Skipped(enum.Enum):
    """Why a maildrop file was not queued (prepare_one, after_commit)."""

    RETRY = enum.auto()  # the queue cannot take it now (full, unwritable, shutting down): the file stays
    GONE = enum.auto()  # its owner removed it before we read it
    REFUSED = enum.auto()  # quarantined or removed (or, when neither could be done, left in place)


class Unsafe(queue_file.FormatError):
    """An entry that must not be kept in corrupt/: removed instead of moved.

    A directory could still be written through a descriptor its owner kept open,
    and a second hard link is a name for a file that is not the submitter's to give.
    """


def shown(name: str) -> str:
    """A file name as it may appear in a log line: names are attacker-chosen, and a
    newline in one would forge a whole log line."""
    return "".join(c if c.isprintable() else "?" for c in name[:64])


def ensure_maildrop(path: str) -> None:
    """1733 like /tmp: anyone may drop a file, nobody but us may list or take it.

    Made when missing. One that exists must be a 1733 directory of root or ours: with any other
    mode or owner, someone may have listed, taken or replaced drops, so it is refused
    (ConfigError, naming the fix), not repaired.
    """
    from agent.queue import dir_safety

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        old = os.umask(0)
        try:
            os.makedirs(path, mode=0o1733, exist_ok=True)
        finally:
            os.umask(old)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(path, 0o1733)  # mkdir's mode may lose the sticky bit
            st = os.lstat(path)
    dir_safety.require_directory("maildrop", path, st, "queue.maildrop")
    dir_safety.require_owner("maildrop", path, st, root_ok=True)
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o1733:
        raise ConfigError(f"maildrop {path} has mode {mode:04o}, not 1733; chmod 1733 {path}")


def candidates(path: str) -> Iterator[str]:
    now = time.time()
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP:
                        remove(e.path)
                        log.warning("maildrop: removed stale temporary file %s", shown(e.name))
                except OSError:
                    pass
                continue
            yield e.name


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def read_untrusted(path: str, max_size: int) -> tuple[bytes, os.stat_result]:
    fd, st = open_untrusted(path, max_size)
    try:
        return _read_all(fd, st.st_size), st
    finally:
        os.close(fd)


def open_untrusted(path: str, max_size: int) -> tuple[int, os.stat_result]:
    """The checks above, and the open fd (the caller closes it) with its fstat."""
    lst = os.lstat(path)
    if stat.S_ISDIR(lst.st_mode):
        raise Unsafe("a directory")
    if not stat.S_ISREG(lst.st_mode):
        raise queue_file.FormatError(_kind(lst.st_mode))  # never opened: a FIFO would block, a device act
    if lst.st_nlink != 1:
        raise Unsafe(f"has {lst.st_nlink} hard links")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
            raise queue_file.FormatError("replaced while being opened")
        if st.st_nlink != 1:
            raise Unsafe(f"has {st.st_nlink} hard links")
        if st.st_size > max_size + queue_file.HEADER_SLACK:
            raise queue_file.FormatError(f"too large ({st.st_size} bytes)")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    left = size + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > size:
        raise queue_file.FormatError("grew while being read")
    return data


class Picked(NamedTuple):
    """A maildrop file read, checked and through cleanup; still to be committed and removed."""

    name: str
    prepared: Prepared
    uid: int
    sender: str
    nrcpt: int
    size: int


def prepare_one(maildrop: str, name: str, cleanup: Cleanup, corrupt_dir: str) -> Picked | Skipped:
    """Read one maildrop file and run cleanup on it; returns it Picked, or why not. Never
    raises: one user's file must not stop pickup for everyone."""
    path = os.path.join(maildrop, name)
    try:
        fd, st = open_untrusted(path, cleanup.cfg.limits.max_message_size)
        try:
            qid = qid_for(name, st, cleanup.queue.key())
            if st.st_size > SMALL:  # big: streamed, never whole in memory
                env, prepared, size = _prepare_streamed(fd, st, cleanup, qid)
            else:
                env, message = queue_file.decode(_read_all(fd, st.st_size))
                size = len(message)
                prepared = cleanup.prepare(
                    env.sender,
                    list(env.recipients),
                    message,
                    uid=submitter(st, env),
                    dsn=env.dsn,
                    origin="maildrop",
                    qid=qid,
                )
        finally:
            os.close(fd)
        prepared = held_if_over(prepared, name, st, cleanup)
    except FileNotFoundError:
        return Skipped.GONE
    except Exception as exc:
        return _refused(path, name, corrupt_dir, exc)
    return Picked(name, prepared, prepared.envelope.uid, env.sender, len(env.recipients), size)


def _prepare_streamed(
    fd: int, st: os.stat_result, cleanup: Cleanup, qid: str
) -> tuple[queue_file.Envelope, Prepared, int]:
    """A big maildrop file: its envelope header read, its message streamed through cleanup
    from the fd. decode()'s checks: the size line, then the end marker and nothing more."""
    block, start = queue_file.split_header(os.pread(fd, queue_file.MAX_HEADER, 0))
    env, size = queue_file.parse_header(block)
    end = start + size
    if st.st_size != end + len(queue_file.END) or os.pread(fd, len(queue_file.END), end) != queue_file.END:
        raise queue_file.FormatError("queue file is incomplete (no end marker)")
    read = bodystream.file_reader(fd, start, size)
    uid = submitter(st, env)
    prepared = cleanup.prepare_stream(
        env.sender, list(env.recipients), read, size, uid=uid, dsn=env.dsn, origin="maildrop", qid=qid
    )
    if os.fstat(fd).st_size != st.st_size or os.pread(fd, len(queue_file.END), end) != queue_file.END:
        prepared.discard()  # its owner rewrote it while we read it
        raise queue_file.FormatError("changed while being read")
    return env, prepared, size


def submitter(st: os.stat_result, env: queue_file.Envelope) -> int:
    """Who submitted a maildrop file: its owner, never what it claims, unless the owner is
    the daemon itself, whose drop socket wrote the uid SO_PEERCRED gave (agent.intake.drop_socket).
    Nobody else can make a file the daemon's: a hard link to one is refused (read_untrusted)."""
    return env.uid if st.st_uid == os.geteuid() else st.st_uid


def held_if_over(prepared: Prepared, name: str, st: os.stat_result, cleanup: Cleanup) -> Prepared:
    """Counted against its submitter's quota, and held when over it whatever limits.over_quota
    says: its sendmail exited 0 already. The drop socket counted its own files when it stored
    them (agent.intake.quotas): only a file the daemon owns can be one."""
    book = quotas.shared(cleanup.queue.path)
    counted, over = book.taken(name)
    if not counted or st.st_uid != os.geteuid():
        over = book.admit(cleanup.cfg, prepared.envelope.uid)
    return prepared if over is None else dataclasses.replace(prepared, hold=(over.held_for, over.reason()))


def after_commit(
    maildrop: str, corrupt_dir: str, picked: Picked, result: str | BaseException
) -> str | Skipped:
    """Remove the file once its message is in the queue (its queue id `result`); else why not."""
    path = os.path.join(maildrop, picked.name)
    if isinstance(result, BaseException):
        return _refused(path, picked.name, corrupt_dir, result)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # its owner removed it after we read it; the queued copy stands
    except OSError as exc:
        # the queued copy stays held from delivery while the file is there (agent.intake.pickup_round)
        log.warning("%s: maildrop file %s not removed yet: %s", result, shown(picked.name), exc.strerror)
    log.info(
        "%s: from=<%s>, nrcpt=%d, size=%d, uid=%d (%s)",
        result,
        shown(picked.sender),
        picked.nrcpt,
        picked.size,
        picked.uid,
        "maildrop" if picked.prepared.hold is None else "maildrop, held",
    )
    return result


def _refused(path: str, name: str, corrupt_dir: str, exc: BaseException) -> Skipped:
    if isinstance(exc, TempError):
        # queue full or unwritable: the file is fine, it waits in the maildrop for the next round
        log.warning("maildrop file %s left for later: %s", shown(name), exc.message)
        return Skipped.RETRY
    if isinstance(exc, Unsafe):
        refuse(path, name, str(exc))
    elif isinstance(exc, (OSError, queue_file.FormatError, AgentError)):
        quarantine(path, name, corrupt_dir, exc.message if isinstance(exc, AgentError) else str(exc))
    elif isinstance(exc, Exception):  # a parser bug must not take pickup down with it
        log.error("maildrop file %s: unexpected error", shown(name), exc_info=exc)
        quarantine(path, name, corrupt_dir, f"unexpected error: {type(exc).__name__}")
    else:
        return Skipped.RETRY  # cancelled (shutdown): the file stays for the next start
    return Skipped.REFUSED


def quarantine(path: str, name: str, corrupt_dir: str, reason: str) -> None:
    dst = os.path.join(corrupt_dir, f"maildrop-{name[:64]}.{int(time.time())}")
    try:
        os.rename(path, dst)  # renames a symlink itself, never its target
        log.warning(
            "maildrop file %s quarantined to %s: %s",
            shown(name),
            os.path.join(corrupt_dir, shown(os.path.basename(dst))),
            reason,
        )
    except FileNotFoundError:
        pass
    except OSError as exc:
        # e.g. another file system: do not loop on it forever
        log.warning(
            "maildrop file %s refused (%s) and cannot be moved: %s", shown(name), reason, exc.strerror
        )
        refuse(path, name, reason)


def refuse(path: str, name: str, reason: str) -> None:
    try:
        remove(path)
        log.warning("maildrop file %s removed: %s", shown(name), reason)
    except OSError as exc:
        log.warning(
            "maildrop file %s refused (%s) and cannot be removed: %s", shown(name), reason, exc.strerror
        )


def remove(path: str) -> None:
    """Unlink a name; a directory goes with everything in it, without following links."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        if not shutil.rmtree.avoids_symlink_attacks:
            raise OSError(errno.EPERM, "refusing to remove a directory on this platform")
        shutil.rmtree(path)
    else:
        os.unlink(path)
