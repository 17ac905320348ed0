"""Pickup rounds: maildrop files into the queue exactly once, whatever moment the daemon dies.

A maildrop file's queue id is a function of the file (queue.ids.qid_for), so entering it
twice gives the same msg/ID. What must never happen is the scheduler delivering (and then
removing) that msg/ID while the maildrop file is still there: the next pickup would find
no msg/ID and queue the file again. Two rules close that:

1. At run time a picked message is held back from the scheduler from before its commit
   until its maildrop file is unlinked and the maildrop directory fsynced (once per batch).
   A file that cannot be unlinked keeps its message held; later rounds try again.
2. At start, before the scheduler runs, `reconcile` removes every maildrop file whose
   msg/ID exists: by rule 1 that message was never delivered, and the queued copy has
   everything the file had. A file that cannot be removed is held as in rule 1.

Crash points (SIGKILL or power loss) and why each is safe:
- before the commit's rename to msg/ID: no msg/ID; the file is still in the maildrop and
  is picked again (its unfinished tmp/ file was never acknowledged: Queue.recover).
- after msg/ID is durable, before the unlink (or its directory fsync) is durable: msg/ID
  was held, so never delivered; the next start's reconcile removes the file, then the
  scheduler delivers msg/ID once.
- after the maildrop fsync, before the release: msg/ID is on disk and never delivered;
  the next start's load_index schedules it, and there is no file to pick again.
- after the release: the file is durably gone; only the queued copy exists.
Nothing is delivered while its maildrop file exists, so "the file is there and msg/ID is
not" can only mean "never entered", and pickup enters it. Files the drop socket stores
for other users are ordinary maildrop files and take the same path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from agent.durable import fsync_dir
from agent.intake import pickup
from agent.intake.cleanup import Cleanup, Prepared
from agent.queue.disk_thread import DiskThread
from agent.queue.ids import qid_for
from agent.queue.store import Queue

log = logging.getLogger("relay-agent")

BATCH = 64  # files prepared, held in memory and committed together...
BATCH_BYTES = 32 << 20  # ...and no more than this of their messages at once


class Settled(NamedTuple):
    """What a batch's end found on disk: qids free to deliver, and held ones to forget
    (no queue file: nothing to deliver)."""

    release: list[str]
    forget: list[str]


def reconcile(maildrop: str, queue: Queue) -> list[tuple[str, str]]:
    """At start, before any delivery: remove maildrop files whose message is queued already.

    Returns (qid, name) for those that could not be removed: they must stay held.
    """
    kept: list[tuple[str, str]] = []
    removed = 0
    key = queue.key()
    for name in pickup.candidates(maildrop):
        path = os.path.join(maildrop, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # never ours to have queued; pickup refuses it
        qid = qid_for(name, st, key)  # lstat and pickup's fstat agree for a regular file
        if not queue.exists(qid):
            continue
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning(
                "%s: maildrop file %s already queued, cannot be removed: %s",
                qid,
                pickup.shown(name),
                exc.strerror,
            )
            kept.append((qid, name))
            continue
        removed += 1
        log.info("%s: maildrop file %s removed: queued before the restart", qid, pickup.shown(name))
    if removed:
        fsync_dir(maildrop)  # before the scheduler may deliver any of them
    return kept


def settle(maildrop: str, queue: Queue, held: dict[str, str]) -> Settled:
    """After a batch's unlinks (disk thread): one fsync of the maildrop, then which held
    messages have no file left there."""
    try:
        fsync_dir(maildrop)
    except OSError as exc:
        log.error("cannot fsync maildrop %s: %s; its messages wait for the next round", maildrop, exc)
        return Settled([], [])
    release, forget = [], []
    for qid, name in held.items():
        if os.path.lexists(os.path.join(maildrop, name)):
            if not queue.exists(qid):
                forget.append(qid)  # not entered (refused, left for later): the file is picked again
        elif queue.exists(qid):
            release.append(qid)
        else:
            forget.append(qid)
    return Settled(release, forget)


class Holds(Protocol):
    """What pickup needs of the scheduler (intake does not import delivery)."""

    def hold(self, qid: str) -> bool: ...

    def unhold(self, qid: str, deliver: bool) -> None: ...


class Pickup:
    """The daemon's pickup: prepare on the disk thread, group-commit, hold, unlink, release."""

    def __init__(
        self,
        queue: Queue,
        cleanup: Callable[[], Cleanup],
        commit: Callable[[Prepared], Awaitable[str]],
        scheduler: Holds,
        disk: DiskThread,
    ) -> None:
        self.queue = queue
        self.cleanup = cleanup
        self.commit = commit
        self.scheduler = scheduler
        self.disk = disk
        self.held: dict[str, str] = {}  # qid -> maildrop name, kept from the scheduler
        self.refused: set[str] = set()  # names that could be neither moved nor removed

    def start(self, maildrop: str) -> None:
        """Before the scheduler's index is loaded and before it runs (rule 2)."""
        for qid, name in reconcile(maildrop, self.queue):
            self._hold(qid, name)

    def _hold(self, qid: str, name: str) -> None:
        # a held id is left alone by the committer's on_entered and by `queue flush`
        if qid in self.held or self.scheduler.hold(qid):
            self.held[qid] = name

    def _settled(self, done: Settled) -> None:
        for qid in done.forget:
            del self.held[qid]
            self.scheduler.unhold(qid, deliver=False)
        for qid in done.release:
            del self.held[qid]
            self.scheduler.unhold(qid, deliver=True)

    async def round(self, maildrop: str) -> None:
        """One scan of the maildrop, committed in batches bounded by count and bytes."""
        if self.held:  # a failed unlink or fsync of an earlier round: try to settle first
            self._settled(await self.disk.run(settle, maildrop, self.queue, dict(self.held)))
        try:
            names = [n for n in pickup.candidates(maildrop) if n not in self.refused]
        except OSError as exc:
            log.error("cannot read maildrop %s: %s", maildrop, exc)
            return
        picked: list[pickup.Picked] = []
        for name in names:
            got = await self.disk.run(pickup.prepare_one, maildrop, name, self.cleanup(), self.queue.corrupt)
            if got is pickup.Skipped.RETRY:
                break  # the queue is full now: the rest waits for the next round
            if isinstance(got, pickup.Skipped):
                self._skip_if_kept(maildrop, name)
                continue
            picked.append(got)
            if len(picked) >= BATCH or sum(p.size for p in picked) >= BATCH_BYTES:
                if not await self._commit(maildrop, picked):
                    return
                picked = []
        if picked:
            await self._commit(maildrop, picked)

    async def _commit(self, maildrop: str, picked: list[pickup.Picked]) -> bool:
        """One group commit; the files go once their messages are queued. False: queue full."""
        for p in picked:
            self._hold(p.prepared.qid, p.name)
        results = await asyncio.gather(*(self.commit(p.prepared) for p in picked), return_exceptions=True)
        full = False
        for p, result in zip(picked, results, strict=True):
            done = await self.disk.run(pickup.after_commit, maildrop, self.queue.corrupt, p, result)
            full = full or done is pickup.Skipped.RETRY
            if done is pickup.Skipped.REFUSED:
                self._skip_if_kept(maildrop, p.name)
        ids = {p.prepared.qid for p in picked}
        mine = {qid: name for qid, name in self.held.items() if qid in ids}
        self._settled(await self.disk.run(settle, maildrop, self.queue, mine))
        return not full

    def _skip_if_kept(self, maildrop: str, name: str) -> None:
        """A refused file that could be neither moved nor removed is not tried again each scan."""
        if os.path.lexists(os.path.join(maildrop, name)):
            self.refused.add(name)
