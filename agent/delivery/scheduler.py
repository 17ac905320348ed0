"""The delivery scheduler: a due-heap of (next_attempt, id), a bounded set of
connection workers (each owns its relay connection), the rate limiter acquired right
before MAIL FROM, and the verdicts of agent.delivery.decisions applied before and after
each transaction (one fsync per recorded transaction).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.config import Config
from agent.delivery import decisions, pacer
from agent.delivery.decisions import Disposition, Entry, Triage, Verdict, expiry_reply, triage
from agent.delivery.worker_connection import WorkerConnection
from agent.errors import AgentError, TempError
from agent.intake.cleanup import Cleanup, Prepared
from agent.mail import bounce
from agent.mail.smtp_text import clean_line
from agent.queue import queue_file, state_file
from agent.queue.disk_thread import DiskThread
from agent.queue.message_source import MessageSource, open_queued
from agent.queue.store import Queue
from agent.relay.connection import RcptResult, RelayConnection, RelayError
from agent.status.counters import Counters

log = logging.getLogger("relay-agent")

CONNECT_BACKOFF_MAX = 30.0
DRAIN_SECONDS = 6.0  # within the daemon's 8 s, within systemd's 10 s
ID_MASK = (1 << 64) - 1
DEFAULT_DSN = {Verdict.SENT: "2.0.0", Verdict.DEFERRED: "4.0.0", Verdict.FAILED: "5.0.0"}


class Scheduler:
    def __init__(
        self,
        cfg: Config,
        queue: Queue,
        cleanup: Callable[[], Cleanup],
        password: Callable[[], str | None],
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
        self.limiter = pacer.make(cfg)
        # One int per scheduled message, (due in ms) << 64 | id: the index of 100,000
        # queued messages must fit the 60 MB budget, so no tuples and no id strings.
        self.heap: list[int] = []
        self.known: set[int] = set()
        self.inflight: set[str] = set()
        self.wake = asyncio.Event()
        self.stopping = False
        self.busy = 0  # workers inside a delivery
        self.work: asyncio.Queue[str] = asyncio.Queue(maxsize=cfg.limits.connections * 2)

    def reconfigure(self, cfg: Config) -> None:
        if pacer.settings(cfg) != pacer.settings(self.cfg):
            pacer.retire(self.limiter)
            self.limiter = pacer.make(cfg)
        self.cfg = cfg

    # -- the index ------------------------------------------------------------
    def load_index(self) -> int:
        """Index every queued message: (due, id) only, never message bodies."""
        with_state = self.queue.has_state()
        count = 0
        for qid in self.queue.ids():
            if int(qid, 16) in self.known or qid in self.inflight:
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
        key = int(qid, 16)
        if key in self.known or qid in self.inflight:
            return  # scheduled already, or being delivered: never twice at once
        self.known.add(key)
        due_ms = max(0, int(due * 1000))
        # due now (every fresh message): the heap shares the set's int instead of an equal copy
        heapq.heappush(self.heap, (due_ms << 64) | key if due_ms else key)
        self.wake.set()

    def hold(self, qid: str) -> bool:
        """Keep an unscheduled message from delivery, `add` and `flush` until `unhold` (pickup)."""
        if qid in self.inflight or int(qid, 16) in self.known:
            return False
        self.inflight.add(qid)
        return True

    def unhold(self, qid: str, deliver: bool) -> None:
        self.inflight.discard(qid)
        if deliver:
            self.add(qid)

    def _next_due(self) -> float:
        return (self.heap[0] >> 64) / 1000

    def _pop(self) -> str:
        key = heapq.heappop(self.heap) & ID_MASK
        self.known.discard(key)
        return f"{key:016X}"

    def flush(self) -> None:
        """Everything due now, including messages that appeared on disk behind our back."""
        # In place, and only the entries that are not due now already: a second list of 100,000
        # ints made here was a few MB the process kept after `queue flush` (freed blocks of a
        # size stay with the allocator), over the 60 MB budget.
        heap = self.heap
        for i, key in enumerate(heap):
            if key > ID_MASK:
                heap[i] = key & ID_MASK
        heapq.heapify(heap)
        self.load_index()
        self.connect_backoff = 0.0
        self.wake.set()

    # -- the loop -------------------------------------------------------------
    connect_backoff = 0.0

    async def run(self) -> None:
        workers = [asyncio.create_task(self._worker(i)) for i in range(self.cfg.limits.connections)]
        try:
            while not self.stopping:
                now = time.time()
                # while the relay is unreachable, leave the index alone: no re-reading
                # of every queued file each time the backoff expires for one of them
                while (
                    self.heap
                    and self._next_due() <= now
                    and now >= self.connect_backoff
                    and not self.stopping
                ):
                    qid = self._pop()
                    self.inflight.add(qid)
                    await self.work.put(qid)
                if now < self.connect_backoff:  # also when a worker just found the relay down
                    delay = self.connect_backoff - now
                else:
                    delay = min(self._next_due() - now, 5.0) if self.heap else 5.0
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
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def _worker(self, n: int) -> None:
        link = WorkerConnection(lambda: RelayConnection(self.cfg.relay, self.password(), self.cfg.helo_name))
        try:
            while not self.stopping:
                qid = await self.work.get()
                self.busy += 1
                try:
                    if not self.stopping:
                        await self._deliver(qid, link)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: unexpected error during delivery; will retry", qid)
                    self._requeue(qid, time.time() + self.cfg.queue.retry_initial)
                finally:
                    self.busy -= 1
                    self.inflight.discard(qid)
        finally:
            await asyncio.shield(link.close())

    def _requeue(self, qid: str, due: float) -> None:
        """Schedule a message we are done with for now (called from its worker)."""
        self.inflight.discard(qid)
        if not self.stopping or due == 0.0:
            self.add(qid, due)

    # -- one message ------------------------------------------------------------
    async def _deliver(self, qid: str, link: WorkerConnection) -> None:
        if time.time() < self.connect_backoff:
            # the relay just failed to connect: do not even open the file (expiry waits too,
            # since a bounce needs the relay as much as the message does)
            self._requeue(qid, self.connect_backoff)
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
            await self._attempt(qid, env, source, self.queue.read_state(qid), link)

    async def _attempt(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        link: WorkerConnection,
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
            await self._send(qid, env, source, state, link)
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
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        link: WorkerConnection,
    ) -> None:
        recipients = [env.recipients[i] for i in state.pending(len(env.recipients))]
        try:
            tx = await link.send(env, recipients, source, self.limiter.acquire)
        except RelayError as exc:
            self.connect_backoff = time.time() + min(CONNECT_BACKOFF_MAX, self.cfg.queue.retry_initial)
            self.counters.relay_error(str(exc))
            self.counters.suspend(exc.where())
            results = decisions.for_pending(state, env, "temp", str(exc))
            await self._record(qid, env, source, state, results, exc.relay)
            return
        self.connect_backoff = 0.0
        self.counters.resume()
        await self._record(qid, env, source, state, tx.results, tx.relay)

    async def _record(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        results: Sequence[RcptResult],
        relay: str,
    ) -> None:
        """Apply a transaction's outcome: log, count, write the state (or remove), bounce, requeue."""
        now = time.time()
        out = decisions.outcome(state, env, results, now, self.cfg.queue, random.uniform(-1.0, 1.0))
        if out.disposition is Disposition.REMOVE:
            # right here, not behind pickup's work on the disk thread: until these two unlinks
            # a kill makes the next daemon send the message again (no fsync: a kill keeps them)
            self.queue.remove(qid, False)
        else:
            await self.disk.run(self.queue.write_state, qid, out.state)
        for entry in out.entries:
            self._log(qid, entry, relay, now - env.created)
        if out.no_bounce is not None:
            log.info("%s: not bouncing: %s", qid, out.no_bounce.value)
        self._count(out)  # after the disk: a reader of the counters finds the queue as they say
        if out.disposition is Disposition.REMOVE:
            return
        due = out.due
        if out.state.bounce_due and not await self._send_bounce(qid, env, source, out.state, relay):
            due = min(due, now + self.cfg.queue.retry_initial)
        self._requeue(qid, due)

    def _count(self, out: decisions.Outcome) -> None:
        if out.recipients(Verdict.FAILED):
            self.counters.bump("bounced")
        if out.disposition is Disposition.DEFERRED:
            self.counters.bump("deferred")
        if out.recipients(Verdict.SENT):
            self.counters.bump("sent")

    def _log(self, qid: str, entry: Entry, relay: str, delay: float) -> None:
        log.info(
            "%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)",
            qid,
            entry.address,
            relay or "none",
            delay,
            bounce.status_of(entry.reply, DEFAULT_DSN[entry.verdict]),
            entry.verdict.value,
            clean_line(entry.reply),
        )

    async def _send_bounce(
        self,
        qid: str,
        env: queue_file.Envelope,
        source: MessageSource,
        state: state_file.State,
        relay: str = "",
    ) -> bool:
        """Queue one DSN for the recipients in state.bounce_due; False to try again later."""
        failed = [
            bounce.FailedRecipient(env.recipients[i], state.rcpt_error(i), remote=bool(relay))
            for i in state.bounce_due
        ]
        cleanup = self.cleanup()
        report = bounce.build(
            qid=qid,
            sender=env.sender,
            failed=failed,
            original=source.prefix(bounce.SIZE_LIMIT),  # never a whole big message in memory
            original_size=source.size,
            hostname=self.cfg.hostname,
            mailer_daemon=cleanup.mailer_daemon(),
            relay=relay,
            arrival=env.created,
            headers_only=env.dsn_param("ret").upper() != "FULL",
        )
        try:
            prepared = cleanup.prepare("", [env.sender], report, origin="bounce")
            bqid = await self.commit(prepared)
        except TempError as exc:
            log.warning("%s: bounce to <%s> not queued yet: %s", qid, env.sender, exc.message)
            return False
        except AgentError as exc:  # e.g. refused by policy: retrying cannot help
            log.error("%s: cannot queue the bounce to <%s>: %s", qid, env.sender, exc.message)
            bqid = ""
        if bqid:
            log.info("%s: sender non-delivery notification: %s", qid, bqid)
        state.bounce_due = []
        await self.disk.run(self.queue.write_state, qid, state)
        return True
