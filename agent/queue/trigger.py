"""The pickup trigger: a FIFO beside the daemon's socket that sendmail pokes after a
maildrop write, so the daemon scans the maildrop at once instead of at its next poll
(Postfix's public/pickup does the same job).

A poke carries no data and proves nothing: the daemon only scans, and every file it
finds is still untrusted input (agent/intake/pickup.py). sendmail imports this module on
its fast path, so it uses `posix` only.
"""

import posix

FIFO_MODE = 0o622  # like Postfix's public/pickup: any local user may poke, only we read
_S_IFMT = 0o170000
_S_IFIFO = 0o010000


def fifo_path(socket_path: str) -> str:
    """Named after the socket, so that a socket in a shared directory never collides."""
    return f"{socket_path}.pickup" if socket_path else ""


def poke(path: str) -> None:
    """Wake the daemon if it is listening; never fails (without a daemon, its start-up
    scan or next poll finds the file)."""
    if not path:
        return
    try:
        # O_NONBLOCK: with no reader, open fails (ENXIO) instead of waiting for one
        fd = posix.open(path, posix.O_WRONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return
    try:
        if posix.fstat(fd).st_mode & _S_IFMT == _S_IFIFO:  # never write into anything else
            posix.write(fd, b"\n")
    except OSError:
        pass  # full (EAGAIN): the daemon has pokes to read already
    finally:
        posix.close(fd)


def listen(path: str) -> int:
    """Make the FIFO afresh and open it for the daemon to read; returns the descriptor.

    Opened read-write: while any writer is attached a FIFO never reads as EOF,
    so the event loop is not woken by every sendmail that closes it.
    """
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    posix.mkfifo(path, FIFO_MODE)
    posix.chmod(path, FIFO_MODE)  # mkfifo's mode is cut by the umask
    return posix.open(path, posix.O_RDWR | posix.O_NONBLOCK | posix.O_NOFOLLOW | posix.O_CLOEXEC)


def drain(fd: int) -> int:
    """Read every pending poke; returns how many bytes there were."""
    total = 0
    while True:
        try:
            chunk = posix.read(fd, 4096)
        except BlockingIOError:
            return total
        if not chunk:
            return total
        total += len(chunk)
