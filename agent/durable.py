"""Durable writes: the one place that calls fsync.

A file is durable once its bytes are fsynced, it has its final name, and the directory
holding that name is fsynced: only then may a caller say "stored" (exit 0, 250). Every
writer of the project does it here, with its choices named:

- `write(path, data, mode=, exclusive=, sync=, sync_dir=, tmp=)`: a whole file at once;
- `Writer(path, mode=)`: a file written a piece at a time (a streamed message), then
  `commit(target)` (fsync, rename, fsync the directory), `sync()` or `abort()`;
- `fsync_dir(path)`: a directory, after renames or unlinks in it;
- `append(path, data)`: a line added to a log-like file, fsynced.

Files are always created with O_EXCL|O_NOFOLLOW (never through a planted symlink, never
over someone's file) and fchmod'ed to `mode`, whatever the umask. posix only, no other
import: sendmail's fast path loads this module on every run.
"""

import posix

CREATE = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
DIRECTORY = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC


def create(path: str, mode: int = 0o600) -> int:
    """A new file at `path`, open for writing, `mode` whatever the umask; FileExistsError if
    anything (a file, a symlink) has that name. Not durable by itself: see Writer."""
    fd = posix.open(path, CREATE, mode)
    try:
        posix.fchmod(fd, mode)
    except BaseException:
        posix.close(fd)
        _unlink_quiet(path)
        raise
    return fd


def write_all(fd: int, data: "bytes | memoryview") -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]


def fsync_dir(path: str, *, or_sync: bool = False) -> None:
    """Make the renames and unlinks in directory `path` durable. or_sync: when the directory
    cannot be opened (a 1733 maildrop is not readable by other users), sync(2) instead:
    slower, but the rename is durable all the same."""
    try:
        fd = posix.open(path, DIRECTORY)
    except OSError:
        if not or_sync:
            raise
        posix.sync()
        return
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def dirname(path: str) -> str:
    head = path.rpartition("/")[0]
    return head or ("/" if path.startswith("/") else ".")


class Writer:
    """A new file written a piece at a time. Any error in write/sync/commit removes it (and
    is raised); so does abort()."""

    def __init__(self, path: str, *, mode: int = 0o600) -> None:
        self.path = path
        self.fd = create(path, mode)

    def write(self, data: "bytes | memoryview") -> None:
        try:
            write_all(self.fd, data)
        except BaseException:
            self.discard()
            raise

    def sync(self, *, fsync: bool = True) -> "posix.stat_result":
        """fsync (unless told not to) and close: the bytes are on disk under `path`, not yet
        durably named; the file's stat."""
        try:
            if fsync:
                posix.fsync(self.fd)
            st = posix.fstat(self.fd)
            self.close()
        except BaseException:
            self.discard()
            raise
        return st

    def commit(
        self, target: str, *, sync: bool = True, sync_dir: bool = True, or_sync: bool = False
    ) -> "posix.stat_result":
        """sync(), rename to `target` (replacing what is there), then fsync target's directory
        unless sync_dir is False (the caller fsyncs it once for many); sync=False: no fsync at
        all; or_sync as fsync_dir's. The file's stat."""
        st = self.sync(fsync=sync)
        try:
            posix.rename(self.path, target)
        except BaseException:
            _unlink_quiet(self.path)
            raise
        if sync and sync_dir:
            fsync_dir(dirname(target), or_sync=or_sync)
        return st

    def abort(self) -> None:
        try:
            self.close()
        finally:
            _unlink_quiet(self.path)

    def close(self) -> None:
        """Close without fsync (abort() also removes the file)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            posix.close(fd)

    def discard(self) -> None:
        """abort(), never raising: on the way out of another error."""
        try:
            self.abort()
        except OSError:
            pass  # the error being raised is the one to report


def write(
    path: str,
    data: "bytes | memoryview",
    *,
    mode: int = 0o600,
    exclusive: bool = False,
    sync: bool = True,
    sync_dir: bool = True,
    tmp: "str | None" = None,
) -> None:
    """Store `data` as the file `path`, `mode` whatever the umask.

    exclusive: FileExistsError if `path` exists; the file is created under its own name (a
    reader may see it before it is complete: for names nobody reads until told, and keys).
    Otherwise it is written to `tmp` (default `path.tmp`; one left by a crash is removed first,
    so writers that may run at once pass names of their own) and renamed over `path`: readers
    see the old file or the new one, whole. sync=False skips every fsync (a status file
    rewritten often, worth no disk flush); sync_dir=False skips only the directory's.
    """
    if exclusive:
        writer = Writer(path, mode=mode)
    else:
        tmp = tmp or path + ".tmp"
        _unlink_quiet(tmp)
        writer = Writer(tmp, mode=mode)
    writer.write(data)
    if not exclusive:
        writer.commit(path, sync=sync, sync_dir=sync_dir)
        return
    writer.sync(fsync=sync)
    if sync and sync_dir:
        fsync_dir(dirname(path))


def append(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Add `data` at the end of the file `path` and fsync it; a missing file is created with
    `mode` under the umask, an existing one keeps its own. Never through a symlink."""
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_APPEND | posix.O_NOFOLLOW | posix.O_CLOEXEC
    fd = posix.open(path, flags, mode)
    try:
        write_all(fd, data)
        posix.fsync(fd)
    finally:
        posix.close(fd)


def _unlink_quiet(path: str) -> None:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
