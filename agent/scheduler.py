"""The delivery scheduler: a due-heap of (next_attempt, id), a bounded set of
connection workers, the rate limiter acquired right before MAIL FROM, and the
state moves after each transaction (one fsync per recorded transaction).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from agent import backoff, bounce, pacer
from agent import envelope as fmt
from agent import queue_state as qs
from agent.cleanup import Cleanup, Prepared
from agent.config import Config
from agent.counters import Counters
from agent.disk_thread import DiskThread
from agent.errors import AgentError, TempError
from agent.message_source import MessageSource, open_queued
from agent.queue import Queue
from agent.relay import RcptResult, RelayConnection, RelayError, TxResult

log = logging.getLogger("relay-agent")

CONNECT_BACKOFF_MAX = 30.0
DRAIN_SECONDS = 6.0  # within the daemon's 8 s, within systemd's 10 s
ID_MASK = (1 << 64) - 1


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
            due = 0.0
            if qid in with_state:
                try:
                    st = self.queue.read_state(qid)
                except (OSError, fmt.FormatError):
                    st = qs.State()
                if st.state == "hold":
                    continue
                due = st.failed_at + self.cfg.queue.failed_keep if st.state == "failed" else st.next_attempt
                if st.bounce_due:
                    due = 0.0  # a bounce the queue could not take before the restart
            self.add(qid, due)
            count += 1
        return count

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
        conn: RelayConnection | None = None
        try:
            while not self.stopping:
                qid = await self.work.get()
                self.busy += 1
                try:
                    if not self.stopping:
                        conn = await self._deliver(qid, conn)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: unexpected error during delivery; will retry", qid)
                    self._requeue(qid, time.time() + self.cfg.queue.retry_initial)
                finally:
                    self.busy -= 1
                    self.inflight.discard(qid)
        finally:
            if conn is not None:
                await asyncio.shield(conn.close())

    def _requeue(self, qid: str, due: float) -> None:
        """Schedule a message we are done with for now (called from its worker)."""
        self.inflight.discard(qid)
        if not self.stopping or due == 0.0:
            self.add(qid, due)

    async def _connection(self, conn: RelayConnection | None) -> RelayConnection:
        if conn is not None and conn.usable:
            return conn
        if conn is not None:
            await conn.close()
        new = RelayConnection(self.cfg.relay, self.password(), self.cfg.helo_name)
        await new.connect()
        return new

    # -- one message ------------------------------------------------------------
    async def _deliver(self, qid: str, conn: RelayConnection | None) -> RelayConnection | None:
        if time.time() < self.connect_backoff:
            # the relay just failed to connect: do not even open the file (expiry waits too,
            # since a bounce needs the relay as much as the message does)
            self._requeue(qid, self.connect_backoff)
            return conn
        try:
            # a small message is one read: cheaper on the loop than a thread hop
            env, source = open_queued(self.queue.msg_path(qid))
        except FileNotFoundError:
            return conn  # deleted by `queue delete` meanwhile
        except fmt.FormatError as exc:
            log.error("%s", self.queue.quarantine(qid, str(exc)))
            return conn
        with source:
            if not source.scanned:  # a big one is read through once, off the loop (8BITMIME?)
                await self.disk.run(source.scan)
            return await self._attempt(qid, env, source, self.queue.read_state(qid), conn)

    async def _attempt(
        self, qid: str, env: fmt.Envelope, source: MessageSource, st: qs.State, conn: RelayConnection | None
    ) -> RelayConnection | None:
        now = time.time()
        if st.bounce_due and not await self._send_bounce(qid, env, source, st):
            self._requeue(qid, now + self.cfg.queue.retry_initial)
            return conn
        if st.state == "hold":
            return conn
        if st.state == "failed":
            if backoff.failed_gone(st.failed_at, now, self.cfg.queue.failed_keep):
                await self.disk.run(self.queue.remove, qid)
                log.info("%s: removed (failed, kept %ds)", qid, self.cfg.queue.failed_keep)
            else:
                self._requeue(qid, st.failed_at + self.cfg.queue.failed_keep)
            return conn
        pending = st.pending(len(env.recipients))
        if not pending:
            await self.disk.run(self.queue.remove, qid)
            return conn
        if backoff.expired(env.created, now, self.cfg.queue.max_age):
            age = int(now - env.created)
            reason = f"message expired after {age}s in the queue ({st.last_error or 'no reply'})"
            results = [RcptResult(env.recipients[i], "perm", "554 5.4.7 " + reason) for i in pending]
            await self._record(qid, env, source, st, pending, results, "", now)
            return conn
        try:
            conn, tx = await self._transaction(conn, env, pending, source)
        except RelayError as exc:
            self.connect_backoff = time.time() + min(CONNECT_BACKOFF_MAX, self.cfg.queue.retry_initial)
            self.counters.relay_error(str(exc))
            self.counters.suspend(exc)
            results = [RcptResult(env.recipients[i], "temp", str(exc)) for i in pending]
            await self._record(qid, env, source, st, pending, results, exc.relay, now)
            return conn
        self.connect_backoff = 0.0
        self.counters.resume()
        await self._record(qid, env, source, st, pending, list(tx.results), tx.relay, now)
        return conn

    async def _transaction(
        self, conn: RelayConnection | None, env: fmt.Envelope, pending: list[int], source: MessageSource
    ) -> tuple[RelayConnection, TxResult]:
        conn = await self._connection(conn)
        args = (env.sender, [env.recipients[i] for i in pending], source, dict(env.dsn))
        try:
            return conn, await conn.send(*args, before_mail=self.limiter.acquire)
        except RelayError as exc:
            if exc.stage != "reuse":
                raise
        # the relay closed our idle connection before anything was sent: reconnect once
        conn = await self._connection(conn)
        return conn, await conn.send(*args, before_mail=self.limiter.acquire)

    async def _record(
        self,
        qid: str,
        env: fmt.Envelope,
        source: MessageSource,
        st: qs.State,
        pending: list[int],
        results: list[RcptResult],
        relay: str,
        started: float,
    ) -> None:
        now = time.time()
        newly_failed: list[bounce.FailedRecipient] = []
        temp_errors = []
        # the relay reports refused recipients before accepted ones: match by address
        by_address = {r.address: r for r in results}
        for i in pending:
            res = by_address[env.recipients[i]]
            self._log(qid, res, relay, now - env.created, started)
            if res.outcome == "sent":
                st.rcpt[i] = (qs.SENT, "")
            elif res.outcome == "perm":
                st.rcpt[i] = (qs.FAILED, res.reply)
                newly_failed.append(bounce.FailedRecipient(res.address, res.reply, remote=bool(relay)))
            else:
                st.rcpt[i] = (qs.PENDING, res.reply)  # still pending, with the reason why
                temp_errors.append(res.reply)
        if newly_failed:
            self.counters.bump("bounced")
            if self._wants_bounce(qid, env):
                # recorded with the failure, so a full queue or a crash cannot lose the bounce
                st.bounce_due += [env.recipients.index(f.address) for f in newly_failed]
        still = st.pending(len(env.recipients))
        any_failed = any(st.rcpt_state(i) == qs.FAILED for i in range(len(env.recipients)))
        due = now
        if not still:
            if not any_failed:
                await self.disk.run(self.queue.remove, qid, False)  # two unlinks, no fsync
            else:
                st.state, st.failed_at = "failed", now
                st.last_error = newly_failed[-1].reply if newly_failed else st.last_error
                await self.disk.run(self.queue.write_state, qid, st)
                due = now + self.cfg.queue.failed_keep
        else:
            st.attempts += 1
            st.state = "deferred"
            st.last_error = temp_errors[-1] if temp_errors else st.last_error
            delay = backoff.next_delay(st.attempts, self.cfg.queue.retry_initial, self.cfg.queue.retry_max)
            # never wait past the expiry time: the message bounces then
            st.next_attempt = due = min(now + delay, env.created + self.cfg.queue.max_age)
            await self.disk.run(self.queue.write_state, qid, st)
            self.counters.bump("deferred")
        sent_now = sum(1 for r in results if r.outcome == "sent")
        if sent_now:
            self.counters.bump("sent")
        if still or any_failed:
            if st.bounce_due and not await self._send_bounce(qid, env, source, st, relay):
                due = min(due, now + self.cfg.queue.retry_initial)
            self._requeue(qid, due)

    def _log(self, qid: str, res: RcptResult, relay: str, delay: float, started: float) -> None:
        status = {"sent": "sent", "temp": "deferred", "perm": "bounced"}[res.outcome]
        dsn = bounce.status_of(res.reply, {"sent": "2.0.0", "temp": "4.0.0", "perm": "5.0.0"}[res.outcome])
        log.info(
            "%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)",
            qid,
            res.address,
            relay or "none",
            delay,
            dsn,
            status,
            fmt.clean_line(res.reply),
        )

    def _wants_bounce(self, qid: str, env: fmt.Envelope) -> bool:
        if not env.sender:
            log.info("%s: not bouncing: null sender", qid)
            return False
        if not self.cfg.queue.bounce or "NEVER" in env.dsn_param("notify").upper():
            log.info("%s: not bouncing: bounces disabled for this message", qid)
            return False
        return True

    async def _send_bounce(
        self, qid: str, env: fmt.Envelope, source: MessageSource, st: qs.State, relay: str = ""
    ) -> bool:
        """Queue one DSN for the recipients in st.bounce_due; False to try again later."""
        failed = [
            bounce.FailedRecipient(env.recipients[i], st.rcpt_error(i), remote=bool(relay))
            for i in st.bounce_due
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
        st.bounce_due = []
        await self.disk.run(self.queue.write_state, qid, st)
        return True
