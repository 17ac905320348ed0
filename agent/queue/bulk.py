"""The whole queue at once, for the CLI (`mailq`, `queue list`, `queue delete`): read and removed lean.

Queue.entries and Queue.remove serve the daemon one message at a time; a listing or a bulk delete
touches every queue file, 100,000 of them in a big queue, so the per-file cost is what matters.
Reading: one os.open, one small os.read (the header is a few hundred bytes), no buffered file
object, names checked with str.strip rather than a character loop. Removing: names relative to
an open directory, a state file unlinked only where there is one, and msg/ fsynced once at the end.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator

from agent.durable import fsync_dir
from agent.queue import queue_file, state_file
from agent.queue.store import DELETED_PREFIX, Entry, Queue

HEX = "0123456789ABCDEF"
HEAD_READ = 4096  # an envelope header fits, with room for many recipients; longer ones read on
READ_MORE = 1 << 16


def ids(queue: Queue) -> list[str]:
    """The queue ids in msg/, sorted (by arrival: ids begin with the time)."""
    names = [n for n in os.listdir(queue.msg) if len(n) == 16 and not n.strip(HEX)]
    names.sort()
    return names


def read_head(name: str, dir_fd: int) -> bytes:
    """The start of a queue file, up to and including its envelope header's blank line."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        head = os.read(fd, HEAD_READ)
        while b"\n\n" not in head and len(head) < queue_file.MAX_HEADER:
            more = os.read(fd, READ_MORE)
            if not more:
                break
            head += more
    finally:
        os.close(fd)
    return head


def scan(queue: Queue) -> Iterator[tuple[str, queue_file.Envelope, int, state_file.State | None]]:
    """(id, envelope, message size, state or None when there is no state file: fresh), in
    Queue.entries' order, skipping the same unreadable files."""
    names = ids(queue)
    with_state = set(os.listdir(queue.statedir))
    split, parse = queue_file.split_header, queue_file.parse_header
    dir_fd = os.open(queue.msg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # one path walk, not one a file
    try:
        for qid in names:
            try:
                env, size = parse(split(read_head(qid, dir_fd))[0])
                state = queue.read_state(qid) if qid in with_state else None
            except (OSError, queue_file.FormatError):
                continue  # vanished (delivered) or broken: the daemon quarantines it
            yield qid, env, size, state
    finally:
        os.close(dir_fd)


def entries(queue: Queue) -> Iterator[Entry]:
    """What Queue.entries yields."""
    for qid, env, size, state in scan(queue):
        yield Entry(qid, env, state or state_file.State(), size)


Pick = Callable[[str, queue_file.Envelope, state_file.State], bool]  # (id, envelope, state): this one?


def release(queue: Queue, pick: Pick) -> list[str]:
    """Release the held messages `pick` chooses: each state file rewritten (durably) as queued and
    due now; their ids. A running daemon schedules them at its next flush (`queue flush`, ETRN)."""
    done = []
    for qid, env, _, state in scan(queue):
        if state is not None and state.held and pick(qid, env, state):
            state.release()
            queue.write_state(qid, state)
            done.append(qid)
    return done


def remove(queue: Queue, names: list[str]) -> None:
    """Queue.remove for many: each queue file before its state file (a crash leaves at most an
    orphan state, which recovery drops), then one fsync of msg/ for them all."""
    with_state = set(os.listdir(queue.statedir))
    msg_fd = os.open(queue.msg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    state_fd = os.open(queue.statedir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for qid in names:
            _unlink_quiet(qid, msg_fd)
            if qid in with_state:
                _unlink_quiet(qid, state_fd)
    finally:
        os.close(msg_fd)
        os.close(state_fd)
    if names:
        fsync_dir(queue.msg)


def remove_all(queue: Queue) -> int:
    """Every message at once: msg/ and state/ renamed into `deleted.<ns>/` and made anew (same
    owner and mode, so a daemon running as another user goes on), then one fsync of the queue
    directory; the count of queue files they held.

    Freeing a file's blocks is the slow part of an unlink (most of it on a disk mounted with
    `discard`), so the old tree is removed by a detached child after this returns; a tree
    left by a killed child is removed by the daemon's recovery at its next start.
    """
    count = len(ids(queue))
    aside = os.path.join(queue.path, f"{DELETED_PREFIX}{time.time_ns()}")
    os.mkdir(aside, 0o700)
    for sub in (queue.msg, queue.statedir):
        state = os.stat(sub)
        os.rename(sub, os.path.join(aside, os.path.basename(sub)))
        os.mkdir(sub, 0o700)  # a commit renaming into it meanwhile fails: no 250, the client retries
        os.chown(sub, state.st_uid, state.st_gid)
        os.chmod(sub, stat.S_IMODE(state.st_mode))
    fsync_dir(queue.path)
    _remove_detached(aside)
    return count


def _remove_detached(path: str) -> None:
    if os.fork() == 0:  # pragma: no cover - the child only removes files
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # let whoever reads our output (a pipe) see its end now
                os.dup2(null, fd)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os._exit(0)


def _unlink_quiet(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass  # delivered (or deleted) meanwhile
