"""One lane per relay account: its own pacer (its own rate; with limits.shared its own Redis key),
its own pool of relay connections (reused while they stay usable), its own password and its own
connect backoff. The scheduler's workers are shared, but a worker never waits for a lane: a
message whose lane has no free connection, or whose relay is backing off, is parked in its lane
and goes back to the scheduler's index when the lane can take it. So one account's relay trouble
(a wrong password, 421s, a relay that is down) or its slow rate never holds back another's mail.

Pacing that listens: with limits.adaptive a lane keeps its account's effective rate (pushback.py),
halved when the relay pushes back and stepped up again after quiet periods; its pacer spaces the
slots at that rate (with limits.shared the fleet's rate in Redis does, and the lane shows the
slower of its own and the fleet's). Every change of the rate it paces at is one log line.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from agent.config import Account, Config
from agent.delivery import pacer
from agent.delivery.pushback import AdaptiveRate, is_pushback
from agent.delivery.worker_connection import WorkerConnection, last_hop
from agent.status.accounts import AccountStatus

Password = Callable[[Account], "str | None"]
RateChanged = Callable[[str, float, float, str], None]  # account, old rate, new rate, why

_closing: set[asyncio.Task[None]] = set()


def close_later(links: list[WorkerConnection]) -> None:
    """Close connections a reload dropped, on the running loop, without waiting for them."""
    for link in links:
        task = asyncio.get_running_loop().create_task(link.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


def _pacer(cfg: Config, account: Account) -> pacer.Pacer:
    made = pacer.make(cfg, account)
    return made if isinstance(made, pacer.SharedPacer) else pacer.Spaced(made)


def _adaptive(cfg: Config, account: Account, now: AdaptiveRate | None) -> AdaptiveRate | None:
    """The account's effective rate (kept across a reload); None with limits.adaptive off."""
    lim = cfg.limits
    if not lim.adaptive:
        return None
    floor = min(lim.min_rate, account.rate)  # an account slower than min_rate keeps its own rate
    if now is None:
        return AdaptiveRate(account.rate, floor, lim.recover_after)
    now.reconfigure(account.rate, floor, lim.recover_after)
    return now


class Lane:
    def __init__(
        self, cfg: Config, account: Account, password: Password, on_rate: RateChanged | None = None
    ) -> None:
        self.cfg = cfg
        self.account = account
        self._password = password
        self.on_rate = on_rate
        self.limiter = _pacer(cfg, account)
        self.adaptive = _adaptive(cfg, account, None)
        self._timer: asyncio.TimerHandle | None = None  # the next look for a recovery step
        self.idle = [self._connection() for _ in range(account.connections)]
        self.current = set(self.idle)  # connections made with the account's relay settings now
        self.busy = 0  # connections out with a worker
        self.connect_backoff = 0.0  # no new transaction before this time (the relay just failed)
        self.parked: deque[int] = deque()  # message keys waiting for this lane, in arrival order
        self.kick = False  # the lane can take more now: give parked messages back to the index
        self.retired = False
        self.status = AccountStatus(account.name, account.relay.username, account.rate, account.rate)

    @property
    def name(self) -> str:
        return self.account.name

    def _connection(self) -> WorkerConnection:
        # made for each connection, so a reload's relay settings and password apply to the next one
        return WorkerConnection(
            lambda: last_hop(self.account.relay, self._password(self.account), self.cfg.helo_name)
        )

    def take(self, now: float) -> WorkerConnection | None:
        """A connection for one transaction, or None: all are busy, or the relay is backing off."""
        if now < self.connect_backoff or not self.idle:
            return None
        self.busy += 1
        return self.idle.pop()  # the most recently used: fewer connections stay open

    def give(self, link: WorkerConnection) -> bool:
        """A connection back after its transaction; False when the lane no longer wants it (close it:
        the account is gone, has fewer connections, or another relay or user since a reload)."""
        self.busy -= 1
        if self.retired or len(self.idle) + self.busy >= self.account.connections:
            self.current.discard(link)
            return False
        kept = link in self.current
        if not kept:  # made for the relay settings before a reload: a new one takes its place
            link = self._connection()
            self.current.add(link)
        self.idle.append(link)
        self.kick = True
        return kept

    def failed(self, now: float, backoff: float, error: str) -> None:
        self.connect_backoff = now + backoff
        self.status.last_relay_error = error

    def releasable(self, now: float) -> int:
        """How many parked messages to hand back to the index now (after a kick)."""
        if self.connect_backoff and now >= self.connect_backoff:
            self.connect_backoff, self.kick = 0.0, True  # the backoff is over: try again
        if not self.kick or now < self.connect_backoff:
            return 0
        self.kick = False
        return min(len(self.parked), len(self.idle))

    def waits_until(self) -> float | None:
        """When parked messages may go again because a backoff ends; None when nothing waits on one."""
        return self.connect_backoff if self.parked and self.connect_backoff else None

    # -- pacing that listens ------------------------------------------------------
    async def acquire(self) -> None:
        """The next slot at the account's effective rate, right before MAIL FROM."""
        await self.limiter.acquire()
        if isinstance(self.limiter, pacer.SharedPacer):
            self._show("the fleet's rate in limits.shared")

    def answered(self, now: float, replies: Sequence[str]) -> tuple[int, bool]:
        """The relay's temporary replies to one transaction: how many were push-back, and whether
        adaptive pacing takes them (all were: the message is retried at the next free slot and its
        recipients are not charged with an attempt)."""
        pushed = [r for r in replies if is_pushback(r)]
        if pushed:
            self.status.last_relay_error = pushed[0]
        if not pushed or self.adaptive is None:
            return len(pushed), False
        self.pushed_back(now, pushed[0])
        return len(pushed), len(pushed) == len(replies)

    def pushed_back(self, now: float, reply: str) -> None:
        """The relay pushed back (`reply`): halve the effective rate, at most once per slot."""
        rate = self.adaptive
        if rate is None:
            return
        rate.effective = self.status.effective_rate  # halved from the pace now (a fleet's, shared)
        rate.pushed_back(now)
        if isinstance(self.limiter, pacer.SharedPacer):  # every push-back renews the fleet's slow-down
            self.limiter.publish(rate.effective, "down", rate.effective)
        self._show(f"relay pushed back: {reply}")
        self._watch()

    def recover(self, now: float) -> None:
        """A step back up towards the configured rate when the relay has been quiet long enough."""
        rate = self.adaptive
        if rate is None:
            return
        before = rate.effective
        if rate.recover(now) is None:
            return
        if isinstance(self.limiter, pacer.SharedPacer):
            self.limiter.publish(rate.effective, "up", before)
        self._show("recovering")

    @property
    def slowed(self) -> bool:
        """Below the configured rate by its own push-back: recovery steps are due now and then."""
        return self.adaptive is not None and self.adaptive.effective < self.adaptive.configured

    def _watch(self) -> None:
        """While slowed, look for a recovery step now and then, on a timer of the lane's own: the
        scheduler's loop can wait a long time on a slow lane's workers."""
        if self.adaptive is None or not self.slowed or self.retired or self._timer is not None:
            return
        step = min(1.0, self.adaptive.recover_after / 4)
        self._timer = asyncio.get_running_loop().call_later(step, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.recover(time.monotonic())
        self._watch()

    def _show(self, why: str) -> None:
        """Pace at the rate now, and say so (status, metrics, one log line) when it changed."""
        limiter, configured = self.limiter, self.account.rate
        if isinstance(limiter, pacer.SharedPacer):  # the fleet's rate in Redis is the pace
            now = min(limiter.fleet_rate or configured, configured)
        else:
            now = self.adaptive.effective if self.adaptive is not None else configured
            if isinstance(limiter, pacer.Spaced):
                limiter.slow_to(now if now < configured else None)
        old, self.status.effective_rate = self.status.effective_rate, now
        if now != old and self.on_rate is not None:
            self.on_rate(self.name, old, now, why)

    def reconfigure(self, cfg: Config, account: Account) -> None:
        if pacer.settings(cfg, account) != pacer.settings(self.cfg, self.account):
            pacer.retire(self.limiter)
            self.limiter = _pacer(cfg, account)
        self.adaptive = _adaptive(cfg, account, self.adaptive)
        if account.relay != self.account.relay:  # another relay or user: no connection of the old one
            close_later(self.idle)
            self.idle, self.current = [], set()
        self.cfg, self.account = cfg, account
        surplus = len(self.idle) + self.busy - account.connections
        if surplus > 0:
            dropped = self.idle[: min(surplus, len(self.idle))]
            self.idle = self.idle[len(dropped) :]
            self.current.difference_update(dropped)
            close_later(dropped)
        else:
            fresh = [self._connection() for _ in range(-surplus)]
            self.idle += fresh
            self.current.update(fresh)
        s = self.status
        s.username, s.rate = account.relay.username, account.rate
        self._show("config reloaded")
        self._watch()
        self.kick = True

    def retire(self) -> list[int]:
        """The account is gone from the config: close what is idle; the parked messages are returned."""
        self.retired = True
        if self._timer is not None:
            self._timer.cancel()
        pacer.retire(self.limiter)
        close_later(self.idle)
        self.idle, self.current = [], set()
        parked, self.parked = list(self.parked), deque()
        return parked

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        links, self.idle = self.idle, []
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
