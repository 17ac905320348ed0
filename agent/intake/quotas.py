"""Submitter quotas ([quotas], limits.over_quota): sliding windows of messages per local user.

A submitter is a local user name: SO_PEERCRED's uid on the socket and the drop socket, the
maildrop file's owner (or the uid line of a file the drop socket wrote), and "smtp" for the
loopback TCP listener. "*" covers every submitter without a line of its own. A window counts
the messages it let through (messages, not recipients); one over its quota is held or refused
and not counted, so a flood never pushes the window further out.

A window is BUCKETS counters, each a slice of the period, so a quota of any size costs the
same few integers: it slides one slice at a time. Apart from the clock (callers may pass `now`)
this is pure logic. One Quotas serves the whole daemon (`shared`): the SMTP handlers on the
event loop, the drop socket's workers and pickup on the disk thread, hence the lock.

The drop socket counts a message when it stores it in the maildrop (that is when it can still
refuse it), and leaves its verdict here under the file's name: pickup takes it (`taken`)
instead of counting the message twice.
"""

from __future__ import annotations

import logging
import pwd
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

from agent.config import Config
from agent.config.quotas import Quota
from agent.errors import TempError

log = logging.getLogger("relay-agent")

BUCKETS = 60
SMTP_USER = "smtp"  # the loopback TCP listener, where no uid is known
ANY_USER = "*"
QUOTA_HOLD = "quota"  # held_for prefix: "quota USER"


_FATE = {
    "hold": "its mail is held (accepted, not sent) until `relay-agent queue release`",
    "refuse": "its mail is refused until the window has room (what comes through the maildrop is held)",
}


class QuotaError(TempError):
    """Over quota with limits.over_quota = "refuse": try again later (sendmail exits 75)."""

    smtp_code = 452
    smtp_status = "4.7.1"


@dataclass(frozen=True)
class Over:
    """A message its submitter's quota does not let through now."""

    user: str
    quota: Quota

    @property
    def held_for(self) -> str:
        return f"{QUOTA_HOLD} {self.user}"

    def reason(self) -> str:
        return f"held: user {self.user} is over its quota of {self.quota} messages ([quotas])"

    def refusal(self) -> QuotaError:
        return QuotaError(f"user {self.user} is over its quota of {self.quota} messages; try again later")


class Window:
    """Messages let through in the last `period` seconds, in BUCKETS slices."""

    __slots__ = ("noticed_until", "slices", "total")

    def __init__(self) -> None:
        self.slices: deque[list[int]] = deque()  # [slice number, count], oldest first
        self.total = 0
        self.noticed_until = 0.0  # the log said "over" for this window until then

    def _slide(self, now_slice: int) -> None:
        while self.slices and self.slices[0][0] <= now_slice - BUCKETS:
            self.total -= self.slices.popleft()[1]

    def full(self, quota: Quota, now: float) -> bool:
        self._slide(int(now * BUCKETS / quota.period))
        return self.total >= quota.count

    def count(self, quota: Quota, now: float) -> None:
        n = int(now * BUCKETS / quota.period)
        if self.slices and self.slices[-1][0] == n:
            self.slices[-1][1] += 1
        else:
            self.slices.append([n, 1])
        self.total += 1


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The submitter's name for [quotas]: -1 (no uid: the TCP listener) is "smtp"; a uid without
    a passwd entry goes by its number."""
    if uid < 0:
        return SMTP_USER
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def quota_for(cfg: Config, user: str) -> Quota | None:
    return cfg.quotas.get(user) or cfg.quotas.get(ANY_USER)


class Quotas:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, Window] = {}
        self._dropped: dict[str, Over | None] = {}  # maildrop file name -> the drop socket's verdict

    def admit(self, cfg: Config, uid: int, now: float | None = None) -> Over | None:
        """Count one message of the submitter `uid` (None: within its quota, or none applies), or
        say it is over (not counted). The first time in a window it is over, one log line."""
        user = user_name(uid)
        quota = quota_for(cfg, user)
        if quota is None:
            return None
        now = time.time() if now is None else now
        with self._lock:
            window = self._windows.setdefault(user, Window())
            if not window.full(quota, now):
                window.count(quota, now)
                return None
            first = now >= window.noticed_until
            if first:
                window.noticed_until = now + quota.period
        if first:
            log.warning(
                "quota: user %s is over its quota of %s: %s", user, quota, _FATE[cfg.limits.over_quota]
            )
        return Over(user, quota)

    def would_refuse(self, cfg: Config, uid: int, now: float | None = None) -> Over | None:
        """With over_quota = "refuse", whether a message would be refused now (nothing counted):
        lets SMTP say so at MAIL FROM rather than after the whole message."""
        user = user_name(uid)
        quota = quota_for(cfg, user)
        if quota is None or cfg.limits.over_quota != "refuse":
            return None
        with self._lock:
            window = self._windows.get(user)
            full = window is not None and window.full(quota, time.time() if now is None else now)
        return Over(user, quota) if full else None

    def dropped(self, name: str, verdict: Over | None) -> None:
        """The drop socket counted the message it is storing as maildrop file `name`."""
        with self._lock:
            self._dropped[name] = verdict

    def forget(self, name: str) -> None:
        with self._lock:
            self._dropped.pop(name, None)

    def taken(self, name: str) -> tuple[bool, Over | None]:
        """Pickup: (whether the drop socket counted maildrop file `name` already, its verdict)."""
        with self._lock:
            if name not in self._dropped:
                return False, None
            return True, self._dropped.pop(name)


_SHARED: dict[str, Quotas] = {}
_SHARED_LOCK = threading.Lock()


def shared(queue_path: str) -> Quotas:
    """The daemon's one Quotas (per queue, so daemons run in one test process stay apart): the
    listeners, the drop socket and pickup reach it through the queue they all serve."""
    with _SHARED_LOCK:
        return _SHARED.setdefault(queue_path, Quotas())
