"""The daemon's sender-domain watch (dns.watch_interval > 0): at start and every watch_interval,
`dns check`'s checks of every sender domain in a child process (agent.dns.watch), and what they
mean for the queue.

A token or DKIM FAIL holds the domain's mail (the relay would refuse it and bounce it to the
app): what is queued, with the failing detail and the record to publish as its reason and
held_for "dns DOMAIN", and what arrives meanwhile (Cleanup.held_domains; the scheduler checks
again before it sends, for what was in flight). A later PASS releases exactly the mail held for
that reason, due at once. SPF and DMARC failures are only logged and shown. A check that could
not run (DNS unreachable) changes nothing.

The child runs on a thread of its own, never the event loop, the disk thread or asyncio's pool
(whose threads asyncio.run waits for at exit): a resolver that never answers delays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.dns.watch import DomainVerdict, changes, run_child, verdicts
from agent.queue import bulk, queue_file, state_file
from agent.queue.store import Queue
from agent.status.counters import Counters

if TYPE_CHECKING:
    from agent.delivery.scheduler import Scheduler
    from agent.queue.disk_thread import DiskThread

log = logging.getLogger("relay-agent")

REPORTED = ("spf", "dmarc")  # failures logged and shown, never held
IDLE_POLL = 5.0  # while the watch is off (a reload may turn it on)


class DomainWatch:
    def __init__(
        self,
        cfg: Callable[[], Config],
        queue: Queue,
        disk: DiskThread,
        scheduler: Scheduler,
        counters: Counters,
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.disk = disk
        self.scheduler = scheduler
        self.counters = counters
        # domain -> (held_for, reason) while its mail is held: shared with Cleanup for new mail
        self.holds: dict[str, tuple[str, str]] = {}
        self.verdicts: dict[str, DomainVerdict] = {}
        self._said: dict[tuple[str, str], str] = {}  # (domain, spf|dmarc) -> the failure last logged
        self._error: str | None = None  # why the last check could not run
        self._loaded = False

    def held_domain(self, env: queue_file.Envelope) -> tuple[str, str] | None:
        """(held_for, reason) when the message's From: domain is held now (the scheduler's check)."""
        return self.holds.get(env.from_domain()) if self.holds else None

    def shown(self) -> list[dict[str, Any]]:
        """status.json's "domains": every checked domain's last verdict."""
        return [v.as_json(iso(v.checked)) for v in self.verdicts.values()]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            interval = self.cfg().dns.watch_interval
            if interval > 0:
                if not self._loaded:  # what an earlier daemon held stays held until a PASS
                    self.holds.update(await self.disk.run(held_on_disk, self.queue))
                    self._loaded = True
                await self.check(stop)
            elif self.holds or self.verdicts:  # turned off by a reload: nothing is held for DNS
                if self.holds:
                    log.info("dns watch: off (dns.watch_interval = 0): releasing the mail it held")
                self.verdicts = {}
                self.counters.changed.set()
                await self._apply({})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval if interval > 0 else IDLE_POLL)

    async def check(self, stop: asyncio.Event) -> None:
        """One round: the child's checks, then what they hold and release."""
        cfg = self.cfg()
        out = await in_thread(run_child, cfg.path, stop)
        if out is None:
            return  # stopping
        if "error" in out or not isinstance(out.get("results"), list):
            self._could_not(str(out.get("error") or "the check gave no results"))
            return
        if self._error is not None:
            log.info("dns watch: the checks run again")
            self._error = None
        results: list[dict[str, Any]] = out["results"]
        accounts = {d: cfg.account_for(d, "") for d in {r["domain"] for r in results}}
        after = verdicts(results, accounts, time.time())
        self._report(results)
        self.verdicts = after
        self._show(after)
        await self._apply(after)

    def _could_not(self, why: str) -> None:
        if why != self._error:  # once per cause, not once per round
            log.warning("dns watch: the checks could not run (%s): nothing held or released", why)
        self._error = why

    async def _apply(self, after: dict[str, DomainVerdict]) -> None:
        hold, release = changes({d: reason for d, (_, reason) in self.holds.items()}, after)
        for domain, reason in hold.items():
            self.holds[domain] = (state_file.dns_hold(domain), reason)  # new mail first, then what is queued
            n = await self.disk.run(hold_queued, self.queue, domain, reason)
            if n:
                self.counters.bump("held", n, after[domain].account)
            log.warning("dns watch: %s: holding its mail (%d queued message(s)): %s", domain, n, reason)
        for domain in release:
            tag, _ = self.holds.pop(domain)
            ids = await self.disk.run(bulk.release, self.queue, lambda _q, _e, st, t=tag: st.held_for == t)
            self.counters.moves += 1  # the queue's figures in /metrics change
            self.scheduler.index.due_now(set(ids))  # those still in the index, due later
            for qid in ids:
                self.scheduler.add(qid)
            log.info("dns watch: %s passes again: released %d message(s)", domain, len(ids))

    def _report(self, results: list[dict[str, Any]]) -> None:
        """SPF and DMARC failures: logged once per domain, check and change; never held."""
        now: dict[tuple[str, str], str] = {}
        for r in results:
            if r["check"] in REPORTED and r["status"] == "FAIL":
                fix = f"; publish: {r['fix']}" if r.get("fix") else ""
                now[(r["domain"], r["check"])] = f"{r['detail']}{fix}"
        for (domain, check), line in now.items():
            if self._said.get((domain, check)) != line:
                log.warning("dns watch: %s %s FAIL: %s (mail not held for this)", domain, check, line)
        for domain, check in self._said.keys() - now.keys():
            log.info("dns watch: %s %s passes again", domain, check)
        self._said = now

    def _show(self, after: dict[str, DomainVerdict]) -> None:
        sink = self.counters.sink
        if sink is not None:
            for v in after.values():
                for check, verdict in v.checks.items():
                    sink.domain_check(v.domain, check, verdict)
        self.counters.changed.set()  # status.json shows them


def hold_queued(queue: Queue, domain: str, reason: str) -> int:
    """(disk thread) Hold every queued message whose From: domain is `domain`, failed ones apart;
    mail held already for this domain takes the new reason, mail held for another keeps its own.
    The number held."""
    tag = state_file.dns_hold(domain)
    n = 0
    for qid, env, _, state in bulk.scan(queue):
        if env.from_domain() != domain:
            continue
        state = state or state_file.State()
        if state.held:
            if state.held_for != tag or state.last_error == reason:
                continue
            state.last_error = reason  # the same hold, a new reason (another check fails now)
        elif state.state == "failed":
            continue  # nothing left to send
        else:
            state.hold(tag, reason)
            n += 1
        queue.write_state(qid, state)
    return n


def held_on_disk(queue: Queue) -> dict[str, tuple[str, str]]:
    """(disk thread) The domains whose mail a daemon before this one held: state files only."""
    out: dict[str, tuple[str, str]] = {}
    for qid in os.listdir(queue.statedir):
        if len(qid) != 16:
            continue  # ID.tmp and the like
        try:
            state = queue.read_state(qid)
        except (OSError, queue_file.FormatError):
            continue
        if state.held and state.held_for.startswith(state_file.DNS_HOLD):
            out.setdefault(state.held_for[len(state_file.DNS_HOLD) :], (state.held_for, state.last_error))
    return out


async def in_thread(
    fn: Callable[[str], dict[str, Any]], arg: str, stop: asyncio.Event
) -> dict[str, Any] | None:
    """fn(arg) on a daemon thread of its own; None when `stop` is set first."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def work() -> None:
        result = fn(arg)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result)

    def settle(result: dict[str, Any]) -> None:
        if not done.done():
            done.set_result(result)

    threading.Thread(target=work, name="dns-watch", daemon=True).start()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return done.result() if done.done() else None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
