"""The delivery scheduler: a due-heap of (next_attempt, id), a bounded set of workers, one lane
per relay account (agent.delivery.lanes: its connections, its rate limiter acquired right before
MAIL FROM, its backoff), and the verdicts of agent.delivery.decisions applied before and after
each transaction (one fsync per recorded transaction).

A message's account was chosen at cleanup and is in its queue file: a worker learns it when it
opens the file, and sends over that account's lane only, or parks the message there when the
lane is busy or backing off. A message whose account is no longer configured is deferred,
never sent with another account's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.config import Account, Config
from agent.delivery import decisions, reporting
from agent.delivery.decisions import Disposition, Triage, expiry_reply, triage
from agent.delivery.due_index import DueIndex
from agent.delivery.lanes import Lane
from agent.delivery.worker_connection import WorkerConnection
from agent.intake.cleanup import Cleanup, Prepared
from agent.queue import queue_file, state_file
from agent.queue.disk_thread import DiskThread
from agent.queue.message_source import MessageSource, open_queued
from agent.queue.store import Queue
from agent.relay.connection import RcptResult, RelayError
from agent.status.counters import Counters

log = logging.getLogger("relay-agent")

CONNECT_BACKOFF_MAX = 30.0
DRAIN_SECONDS = 6.0  # within the daemon's 8 s, within systemd's 10 s


class Scheduler:
    def __init__(
        self,
        cfg: Config,
        queue: Queue,
        cleanup: Callable[[], Cleanup],
        password: Callable[[Account], str | None],
        counters: Counters,
        disk: DiskThread,
        commit: Callable[[Prepared], Awaitable[str]],
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.cleanup = cleanup
        self.password = password
        self.counters = counters
        self.disk = disk
        self.commit = commit
        self.lanes: dict[str, Lane] = {}
        self.orphans: dict[str, set[str]] = {}  # deferred because their account is not configured
        # (held_for, reason) when the message's From: domain is held now (the sender-domain watch)
        self.domain_hold: Callable[[queue_file.Envelope], tuple[str, str] | None] = lambda env: None
        self.wake = asyncio.Event()
        self.index = DueIndex(self.wake)
        self.stopping = False
        self.busy = 0  # workers inside a delivery
        self.work: asyncio.Queue[str] = asyncio.Queue(maxsize=cfg.limits.connections * 2)
        self.workers: list[asyncio.Task[None]] = []
        self._lanes_for(cfg)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lanes_for(cfg)
        if self.workers:
            self._spawn()

    def _lanes_for(self, cfg: Config) -> None:
        """One lane per configured account: kept (with its connections and pace) across a reload
        that keeps the account, made for a new one, retired for one the reload dropped."""
        names = [a.name for a in cfg.accounts]
        for name in [n for n in self.lanes if n not in names]:
            lane = self.lanes.pop(name)
            self.counters.accounts.pop(name, None)
            for key in lane.retire():  # to the index again: each is deferred, naming its account
                self.index.unpark(key)
        for account in cfg.accounts:
            if account.name in self.lanes:
                self.lanes[account.name].reconfigure(cfg, account)
                continue
            rate_changed = functools.partial(reporting.rate_changed, self.counters)
            self.lanes[account.name] = Lane(cfg, account, self.password, rate_changed)
            self.index.due_now(self.orphans.pop(account.name, set()))  # its account is back: try them now
        self.counters.accounts = {name: self.lanes[name].status for name in names}
        self.counters.changed.set()

    def _spawn(self) -> None:
        """Enough workers that every lane can use all its connections at once, plus one to sort
        messages into lanes while they do when there are several (workers never wait on a lane)."""
        wanted = sum(lane.account.connections for lane in self.lanes.values())
        wanted += 1 if len(self.lanes) > 1 else 0
        while len(self.workers) < wanted:
            self.workers.append(asyncio.create_task(self._worker(len(self.workers))))

    # -- the index ------------------------------------------------------------
    def load_index(self) -> int:
        """Index every queued message: (due, id) only, never message bodies."""
        with_state = self.queue.has_state()
        count = 0
        for qid in self.queue.ids():
            if self.index.listed(qid):
                continue
            due = self._due_on_disk(qid) if qid in with_state else 0.0
            if due is not None:  # None: held
                self.add(qid, due)
                count += 1
        return count

    def _due_on_disk(self, qid: str) -> float | None:
        try:
            state = self.queue.read_state(qid)
        except (OSError, queue_file.FormatError):
            state = state_file.State()
        return decisions.index_due(state, self.cfg.queue)

    def add(self, qid: str, due: float = 0.0) -> None:
        self.index.add(qid, due)

    def hold(self, qid: str) -> bool:
        """Keep an unscheduled message from delivery, `add` and `flush` until `unhold` (pickup)."""
        return self.index.hold(qid)

    def unhold(self, qid: str, deliver: bool) -> None:
        self.index.inflight.discard(qid)
        if deliver:
            self.add(qid)

    def flush(self) -> None:
        """Everything due now, including messages that appeared on disk behind our back."""
        self.index.all_due_now()
        self.load_index()
        for lane in self.lanes.values():
            lane.connect_backoff, lane.kick = 0.0, True
        self.wake.set()

    @property
    def connect_backoff(self) -> float:
        """Until when no lane can send (their relays are all backing off); 0.0 while one can."""
        return min(lane.connect_backoff for lane in self.lanes.values())

    def _park(self, key: int, lane: Lane) -> None:
        self.index.park(key)
        lane.parked.append(key)

    def _release(self, now: float) -> float:
        """Parked messages back to the index for each lane that can take them; returns when a
        lane's backoff ends with messages parked on it (a time to wake up then)."""
        until = now + 5.0
        for lane in self.lanes.values():
            for _ in range(lane.releasable(now)):
                self.index.unpark(lane.parked.popleft())
            if (ends := lane.waits_until()) is not None:
                until = min(until, ends)
        return until

    def _pushed_back(self, lane: Lane, replies: Sequence[str]) -> bool:
        count, taken = lane.answered(time.monotonic(), replies)
        self.counters.pushback(lane.name, count)
        return taken

    # -- the loop -------------------------------------------------------------
    async def run(self) -> None:
        self._spawn()
        try:
            while not self.stopping:
                now = time.time()
                wake_at = self._release(now)
                # while every relay is unreachable, leave the index alone: no re-reading
                # of every queued file each time the backoff expires for one of them
                backoff = self.connect_backoff
                index = self.index
                while index.heap and index.next_due() <= now and now >= backoff and not self.stopping:
                    qid = index.pop()
                    index.inflight.add(qid)
                    await self.work.put(qid)
                if now < backoff:  # also when a worker just found the relay down
                    delay = backoff - now
                else:
                    delay = min(index.next_due() - now, 5.0) if index.heap else 5.0
                delay = min(delay, wake_at - now)
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), max(delay, 0.01))
                except TimeoutError:
                    pass
        finally:
            # SIGTERM: transactions in flight finish and get recorded (a cancelled one would be
            # sent again after restart); what waits in the work queue simply stays on disk
            deadline = time.monotonic() + DRAIN_SECONDS
            while self.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for w in self.workers:
                w.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)
            closing = asyncio.gather(*(lane.close() for lane in self.lanes.values()))
            await asyncio.shield(closing)

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def _worker(self, n: int) -> None:
        while not self.stopping:
            qid = await self.work.get()
            self.busy += 1
            try:
                if not self.stopping:
                    await self._deliver(qid)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: unexpected error during delivery; will retry", qid)
                self._requeue(qid, time.time() + self.cfg.queue.retry_initial)
            finally:
                self.busy -= 1
                self.index.inflight.discard(qid)

    def _requeue(self, qid: str, due: float) -> None:
        """Schedule a message we are done with for now (called from its worker)."""
        self.index.inflight.discard(qid)
        if not self.stopping or due == 0.0:
            self.add(qid, due)

    # -- one message ------------------------------------------------------------
    async def _deliver(self, qid: str) -> None:
        if len(self.lanes) == 1 and time.time() < self.connect_backoff:
            # the one relay just failed to connect: do not even open the file (expiry waits
            # too, since a bounce needs the relay as much as the message does). Parked in
            # arrival order, so the tries while the relay is down go round the whole queue
            # instead of the same few lowest ids after every backoff
            self._park(int(qid, 16), next(iter(self.lanes.values())))
            return
        try:
            # a small message is one read: cheaper on the loop than a thread hop
            env, source = open_queued(self.queue.msg_path(qid))
        except FileNotFoundError:
            return  # deleted by `queue delete` meanwhile
        except queue_file.FormatError as exc:
            log.error("%s", self.queue.quarantine(qid, str(exc)))
            return
        with source:
            if not source.scanned:  # a big one is read through once, off the loop (8BITMIME?)
                await self.disk.run(source.scan)
            await self._attempt(qid, env, source, self.queue.read_state(qid))

    async def _attempt(
        self, qid: str, env: queue_file.Envelope, source: MessageSource, state: state_file.State
    ) -> None:
        now = time.time()
        keep = self.cfg.queue.failed_keep
        verdict = triage(state, env, now, self.cfg.queue)
        if verdict is Triage.BOUNCE_OWED:
            if not await self._send_bounce(qid, env, source, state):
                self._requeue(qid, now + self.cfg.queue.retry_initial)
                return
            verdict = triage(state, env, now, self.cfg.queue)  # the bounce is off the state now
        if verdict is Triage.SEND:
            await self._send(qid, env, source, state)
        elif verdict is Triage.EXPIRED:
            results = decisions.for_pending(state, env, "perm", expiry_reply(state, env, now))
            await self._record(qid, env, source, state, results, "")
        elif verdict is Triage.FAILED_KEPT:
            self._requeue(qid, state.failed_at + keep)
        elif verdict in (Triage.FAILED_GONE, Triage.NOTHING_PENDING):
            await self.disk.run(self.queue.remove, qid)
            if verdict is Triage.FAILED_GONE:
                log.info("%s: removed (failed, kept %ds)", qid, keep)
        # Triage.HELD: left alone until `queue release` schedules it again

    async def _send(
        self, qid: str, env: queue_file.Envelope, source: MessageSource, state: state_file.State
    ) -> None:
        """Over the message's own account's lane, never another's: parked while the lane is busy."""
        if (hold := self.domain_hold(env)) is not None:  # its domain broke while it waited: not sent
            state.hold(*hold)
            await self.disk.run(self.queue.write_state, qid, state)
            return
        lane = self.lanes.get(env.account)
        if lane is None:
            reply = f"451 4.3.5 relay account {env.account!r} is not configured; kept queued until it is"
            self.orphans.setdefault(env.account, set()).add(qid)
            results = decisions.for_pending(state, env, "temp", reply)
            await self._record(qid, env, source, state, results, "")
            return
        link = lane.take(time.time())
        if link is None:
            self._park(int(qid, 16), lane)
            return
        try:
            await self._transact(qid, env, source, state, lane, link)
        finally:
            if not lane.give(link):
                await asyncio.shield(link.close())
            if lane.parked:
                self.wake.set()  # they may go now

    async def _transact(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        lane: Lane,
        link: WorkerConnection,
    ) -> None:
        recipients = [env.recipients[i] for i in state.pending(len(env.recipients))]
        try:
            tx = await link.send(env, recipients, source, lane.acquire)
        except RelayError as exc:
            if exc.reply[:3].isdigit():
                self.counters.reply(exc.reply, lane.name)
            # push-back: the relay is there and answers, so no backoff, only a slower pace
            if not (pushed := self._pushed_back(lane, [exc.reply])):
                self._relay_failed(lane, exc)
            results = decisions.for_pending(state, env, "temp", str(exc))
            await self._record(qid, env, source, state, results, exc.relay, pushed)
            return
        lane.connect_backoff = 0.0
        self.counters.resume(lane.name)
        for r in tx.results:
            self.counters.reply(r.reply, lane.name)
        if any(r.outcome == "sent" for r in tx.results):
            self.counters.delivered(time.time() - env.created, lane.name)
        pushed = self._pushed_back(lane, [r.reply for r in tx.results if r.outcome == "temp"])
        await self._record(qid, env, source, state, tx.results, tx.relay, pushed)

    def _relay_failed(self, lane: Lane, exc: RelayError) -> None:
        """This account's relay failed us: only this account backs off, and its waiting mail shows
        the suspension in `mailq` and `status`."""
        lane.failed(time.time(), min(CONNECT_BACKOFF_MAX, self.cfg.queue.retry_initial), str(exc))
        self.counters.relay_error(str(exc))
        self.counters.suspend(lane.name, exc.where())

    async def _record(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        results: Sequence[RcptResult],
        relay: str,
        pushed_back: bool = False,
    ) -> None:
        """Apply a transaction's outcome: log, count, write the state (or remove), bounce, requeue."""
        now = time.time()
        spread = random.uniform(-1.0, 1.0)
        out = decisions.outcome(state, env, results, now, self.cfg.queue, spread, pushed_back)
        if out.disposition is Disposition.REMOVE:
            # right here, not behind pickup's work on the disk thread: until these two unlinks
            # a kill makes the next daemon send the message again (no fsync: a kill keeps them)
            self.queue.remove(qid, False)
        else:
            await self.disk.run(self.queue.write_state, qid, out.state)
        for entry in out.entries:
            reporting.log_entry(qid, entry, relay, env.account, now - env.created)
        if out.no_bounce is not None:
            log.info("%s: not bouncing: %s", qid, out.no_bounce.value)
        reporting.count(
            self.counters, out, env.account
        )  # after the disk: a reader of the counters finds the queue as they say
        if out.disposition is Disposition.REMOVE:
            return
        due = out.due
        if out.state.bounce_due and not await self._send_bounce(qid, env, source, out.state, relay):
            due = min(due, now + self.cfg.queue.retry_initial)
        self._requeue(qid, due)

    async def _send_bounce(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        relay: str = "",
    ) -> bool:
        """Queue one DSN for the recipients in state.bounce_due; False to try again later."""
        cleanup, hostname = self.cleanup(), self.cfg.hostname
        if not await reporting.queue_bounce(qid, env, source, state, relay, cleanup, self.commit, hostname):
            return False
        state.bounce_due = []
        await self.disk.run(self.queue.write_state, qid, state)
        return True
