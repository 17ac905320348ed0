"""Maildrop pickup: files written by other local users are untrusted input.

Each file is opened without following links, must be a regular file with one
link and a sane size, is parsed defensively, and goes through cleanup like
any submission. Whatever fails is quarantined with a log line; the daemon
keeps running.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator

from agent import envelope as fmt
from agent.cleanup import Cleanup
from agent.errors import AgentError

log = logging.getLogger("relay-agent")

HEADER_SLACK = 1 << 20  # envelope header allowance on top of the message size limit
STALE_TMP = 3600.0  # a sendmail that has not renamed its temp file in an hour died


def ensure_maildrop(path: str) -> None:
    """1733 like /tmp: anyone may drop a file, nobody but us may list or take it."""
    old = os.umask(0)
    try:
        os.makedirs(path, mode=0o1733, exist_ok=True)
    finally:
        os.umask(old)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory")
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o1733:
        os.chmod(path, 0o1733)


def candidates(path: str) -> Iterator[str]:
    now = time.time()
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP:
                        os.unlink(e.path)
                except OSError:
                    pass
                continue
            yield e.name


def qid_for(name: str, mtime: float) -> str:
    """Deterministic per file, so a crash between enter and unlink cannot duplicate."""
    digits = "".join(c for c in name.upper() if c in "0123456789ABCDEF")[:5].ljust(5, "0")
    return f"{int(mtime * 1_000_000) & 0xFFFFFFFFFFF:011X}{digits}"


def read_untrusted(path: str, max_size: int) -> tuple[bytes, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fmt.FormatError("not a regular file")
        if st.st_nlink != 1:
            raise fmt.FormatError(f"has {st.st_nlink} hard links")
        if st.st_size > max_size + HEADER_SLACK:
            raise fmt.FormatError(f"too large ({st.st_size} bytes)")
        chunks = []
        left = st.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > st.st_size:
            raise fmt.FormatError("grew while being read")
        return data, st
    finally:
        os.close(fd)


def pick_one(maildrop: str, name: str, cleanup: Cleanup, corrupt_dir: str) -> str | None:
    """Take one maildrop file into the queue; returns the queue id or None."""
    path = os.path.join(maildrop, name)
    try:
        data, st = read_untrusted(path, cleanup.cfg.limits.max_message_size)
        env, message = fmt.decode(data)
        qid = cleanup.accept(
            env.sender,
            list(env.recipients),
            message,
            uid=st.st_uid,  # the file's owner, not what the file claims
            dsn=env.dsn,
            origin="maildrop",
            qid=qid_for(name, st.st_mtime),
        )
    except FileNotFoundError:
        return None
    except (OSError, fmt.FormatError, AgentError) as exc:
        reason = exc.message if isinstance(exc, AgentError) else str(exc)
        quarantine(path, name, corrupt_dir, reason)
        return None
    os.unlink(path)
    log.info(
        "%s: from=<%s>, nrcpt=%d, size=%d, uid=%d (maildrop)",
        qid,
        env.sender,
        len(env.recipients),
        len(message),
        st.st_uid,
    )
    return qid


def quarantine(path: str, name: str, corrupt_dir: str, reason: str) -> None:
    dst = os.path.join(corrupt_dir, f"maildrop-{name[:64]}.{int(time.time())}")
    try:
        os.rename(path, dst)
        log.warning("maildrop file %s quarantined to %s: %s", name[:64], dst, reason)
    except OSError as exc:
        # e.g. a directory, or another file system: do not loop on it forever
        log.warning("maildrop file %s refused (%s) and cannot be moved: %s", name[:64], reason, exc)
        try:
            os.unlink(path)
        except OSError:
            pass
