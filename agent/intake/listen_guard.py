"""Limits on the local listeners: how many sessions at once, how long each, and what happens
when the daemon runs out of file descriptors.

Any local user can connect to the submission socket and to the drop socket. Without limits,
idle or trickling connections each keep a file descriptor (and aiosmtpd's idle timeout
restarts on every byte), until accept() fails with EMFILE; asyncio then logs a traceback for
every failed accept. Here:
- the file-descriptor limit is raised to its hard limit (systemd asks daemons that do not
  use select() to do so) and split into a budget per listener (`FdBudget`);
- `SessionGuard` wraps an SMTP protocol factory: past its cap a new session gets 421 at
  once (its client uses the maildrop), and every session ends at an overall deadline;
- `Episode` logs one line when accepting starts to fail for want of descriptors, and nothing
  more while it goes on; `quiet_accept_errors` routes asyncio's accept errors
  there (asyncio itself already stops accepting for a second after each).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relay-agent")

NOFILE_WANTED = 65536  # what systemd/relay-agent.service sets; more buys nothing here
FD_RESERVE = 256  # kept for the daemon's own work: relay connections, queue and maildrop files
SMTP_SESSIONS = 1000  # both SMTP listeners together; one descriptor each
DROP_HANDOVERS = 256  # the drop socket's hand-overs at once; two descriptors each (socket, file)
# An SMTP session of a local client, even one sending many messages, needs seconds; aiosmtpd's
# own timeout is per command and restarts with every byte, so without this a client trickling
# a byte now and then would keep its session (and a descriptor) for ever.
SESSION_DEADLINE = 600.0
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BUSY_REPLY = b"421 4.3.2 too many connections at once; try again later\r\n"
LATE_REPLY = b"421 4.4.2 session deadline reached; closing\r\n"


class Episode:
    """One log line when a condition starts; none while it lasts, that is until it has not
    been seen for QUIET seconds (at the limit a descriptor comes free now and then and an
    accept works, which does not end the shortage). Safe from any thread."""

    QUIET = 60.0

    def __init__(self, text: str) -> None:
        self.text = text
        self.last = -self.QUIET
        self.lock = threading.Lock()

    def hit(self, detail: str) -> None:
        now = time.monotonic()
        with self.lock:
            new = now - self.last >= self.QUIET
            self.last = now
        if new:
            log.warning("%s: %s", self.text, detail)


class FdBudget:
    """How many SMTP sessions and drop-socket hand-overs fit under RLIMIT_NOFILE."""

    def __init__(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
        self.limit = soft if soft != resource.RLIM_INFINITY else NOFILE_WANTED
        spare = max(self.limit - FD_RESERVE, 0)
        need = SMTP_SESSIONS + 2 * DROP_HANDOVERS
        self.smtp = SMTP_SESSIONS if spare >= need else max(spare * SMTP_SESSIONS // need, 16)
        self.drop = DROP_HANDOVERS if spare >= need else max(spare * DROP_HANDOVERS // need, 8)
        if spare < need:
            log.warning(
                "file descriptor limit %d: %d SMTP sessions and %d drop-socket hand-overs at once "
                "(raise LimitNOFILE for more)",
                self.limit,
                self.smtp,
                self.drop,
            )


class SessionGuard:
    """A protocol factory for loop.create_server: at most `cap` sessions at once across the
    listeners sharing it, each closed at `deadline`."""

    def __init__(self, cap: int, deadline: float = SESSION_DEADLINE) -> None:
        self.cap = cap
        self.deadline = deadline
        self.live = 0
        self.full = Episode("too many SMTP sessions at once, new ones get 421")

    def wrap(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def guarded() -> asyncio.Protocol:
            if self.live >= self.cap:
                self.full.hit(f"{self.live} open, the cap")
                return _Refuse()
            return _Session(make(), self)

        return guarded


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_REPLY)
        transport.close()


class _Session(asyncio.Protocol):
    """Passes everything to the SMTP protocol; counts the session and ends it at the deadline."""

    def __init__(self, inner: asyncio.Protocol, guard: SessionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.live += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(self.guard.deadline, _expire, transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.guard.live -= 1
            self.counted = False
        if self.timer is not None:
            self.timer.cancel()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _expire(transport: asyncio.BaseTransport) -> None:
    """A session past its deadline: told so if it can take it at once, then cut off (a message
    not yet answered 250 was not taken; its client retries or uses the maildrop)."""
    if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
        transport.write(LATE_REPLY)
        transport.abort()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, episode: Episode) -> None:
    """asyncio logs a traceback for each accept() that fails for want of descriptors (up to a
    hundred a tick), and, for a server closed while it waits to retry, one per retry queued:
    here the first becomes one line per episode and the second nothing."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_FDS and "accept" in context.get("message", ""):
            episode.hit(f"{exc.strerror}; not accepting for a while")
            return
        if isinstance(exc, ValueError) and "_start_serving" in repr(context.get("handle")):
            return  # a listener closed while asyncio waited to retry accepting on it
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def out_of_fds() -> Episode:
    return Episode("out of file descriptors, new connections wait")
