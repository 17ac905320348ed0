"""Drop a message into the maildrop (agent.submit.submission.deliver says when).

Same discipline as the queue: write a dot-file (the daemon ignores those),
fsync, rename to a random name, fsync the directory; only then is the caller
told the mail is safe. The maildrop is 1733 (sticky, not listable), so names
are random and files are created with O_EXCL|O_NOFOLLOW.
"""

import posix  # not os: see config_path
import time

from agent import durable
from agent.errors import NoSpaceError, TempError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is dear on sendmail's path
if TYPE_CHECKING:
    from typing import NoReturn

MAILDROP_MODE = 0o1733


def _is_dir(path: str) -> bool:
    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def _make_parents(path: str) -> None:
    """os.makedirs(path, exist_ok=True) without importing os."""
    if not path or _is_dir(path):
        return
    _make_parents(path.rpartition("/")[0])
    try:
        posix.mkdir(path, 0o755)
    except FileExistsError:
        pass


def ensure_dir(maildrop: str) -> None:
    """Create the maildrop when root (install/daemon normally do); others cannot."""
    if _is_dir(maildrop):
        return
    if posix.geteuid() != 0:
        raise TempError(f"maildrop {maildrop} does not exist (is relay-agent installed?)")
    try:
        _make_parents(maildrop.rpartition("/")[0])
        posix.mkdir(maildrop, MAILDROP_MODE)
        posix.chmod(maildrop, MAILDROP_MODE)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise TempError(f"cannot create maildrop {maildrop}: {exc.strerror}") from None


def can_fsync(maildrop: str) -> bool:
    """Whether we may open the maildrop to fsync it: root and its owner may; others
    (1733: not readable) would need sync(2) to make a rename in it durable."""
    try:
        fd = posix.open(maildrop, posix.O_RDONLY | posix.O_DIRECTORY)
    except OSError:
        return False
    posix.close(fd)
    return True


def check_space(maildrop: str, min_free: int) -> None:
    try:
        st = posix.statvfs(maildrop)
    except OSError as exc:
        raise TempError(f"cannot write to maildrop {maildrop}: {exc.strerror}") from None
    if st.f_bavail * st.f_frsize < min_free:
        raise NoSpaceError("queue file system is full")


def encoded(sender: str, recipients: list[str], message: bytes, dsn: tuple[tuple[str, str], ...]) -> bytes:
    """A maildrop file's bytes (also what the drop socket takes)."""
    from agent.queue.queue_file import Envelope, encode  # here: `mailq` imports this module without it

    return encode(Envelope(sender, tuple(recipients), time.time(), dsn, posix.getuid()), message)


def write(
    maildrop: str,
    min_free: int,
    sender: str,
    recipients: list[str],
    message: bytes,
    dsn: tuple[tuple[str, str], ...] = (),
) -> str:
    """Durably store one message; returns its file name. Raises TempError on any trouble."""
    ensure_dir(maildrop)
    return store(maildrop, min_free, encoded(sender, recipients, message, dsn))[0]


def store(maildrop: str, min_free: int, data: bytes) -> "tuple[str, posix.stat_result]":
    """Durably store a maildrop file's bytes: its name and its stat (the drop socket names
    the queue id from it as pickup will)."""
    pending = Pending(maildrop, min_free)
    pending.write(data)
    return pending.commit()


class Pending:
    """A maildrop file written a piece at a time (the drop socket streams a hand-over into
    one): a dot-file until commit() makes it durable under its name; abort() removes it.
    Raises NoSpaceError / TempError as store() does, having removed the dot-file."""

    def __init__(self, maildrop: str, min_free: int) -> None:
        check_space(maildrop, min_free)
        self.maildrop = maildrop
        self.name = posix.urandom(16).hex()
        try:
            # 0644 whatever our umask: the daemon (another user) must read it
            self.file = durable.Writer(f"{maildrop}/.t{self.name}", mode=0o644)
        except OSError as exc:
            raise TempError(f"cannot write to maildrop {maildrop}: {exc.strerror}") from None

    def write(self, data: "bytes | memoryview") -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> "tuple[str, posix.stat_result]":
        """fsync, rename to the file's random name, fsync the directory (sync(2) for users who
        may not open it): its name and stat."""
        try:
            st = self.file.commit(f"{self.maildrop}/{self.name}", or_sync=True)
        except OSError as exc:
            self._fail(exc)
        return self.name, st

    def abort(self) -> None:
        self.file.abort()

    def _fail(self, exc: OSError) -> "NoReturn":
        self.file.discard()  # the file is gone whatever failed
        if exc.errno == 28:  # ENOSPC
            raise NoSpaceError("queue file system is full") from None
        raise TempError(f"cannot write to maildrop {self.maildrop}: {exc.strerror}") from None
