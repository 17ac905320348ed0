"""Group commit: the private-key step and the durable write of accepted messages.

Every message is fsynced before its 250, but messages accepted at about the same
time share the journal commits (Queue.enter_batch). The work runs on its own
thread: RSA signing, write and fsync release the GIL, so the event loop goes on
receiving and delivering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator

from agent.errors import TempError
from agent.intake.cleanup import Prepared
from agent.queue import state_file
from agent.queue.queue_file import Envelope
from agent.queue.spool import Spooled
from agent.queue.store import Queue

MAX_BATCH = 64


class Committer:
    """`on_entered(qid)` runs on the event loop for every message written, also when the session
    that handed it over has gone meanwhile: the message is on disk, so it must be delivered."""

    def __init__(self, queue: Queue, on_entered: Callable[[str], None] = lambda qid: None) -> None:
        self.queue = queue
        self.on_entered = on_entered
        self._jobs: deque[tuple[Prepared, asyncio.Future[str]]] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._main, name="relay-agent-commit", daemon=True)
        self._thread.start()

    async def commit(self, prepared: Prepared) -> str:
        """Sign and durably enter `prepared`; returns its queue id once it is on disk.
        Its spool file, if any, is removed either way (committed, refused, or not taken)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._closing:
                prepared.discard()
                raise TempError("shutting down; try again later")
            self._jobs.append((prepared, future))
            self._wake.notify()
        return await future

    def close(self) -> None:
        """Finish what was handed over, then stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _main(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closing:
                    self._wake.wait()
                if not self._jobs:
                    return
                batch = [self._jobs.popleft() for _ in range(min(len(self._jobs), MAX_BATCH))]
            _finish(batch, self._run(batch), self.on_entered)

    def _run(self, batch: list[tuple[Prepared, asyncio.Future[str]]]) -> list[str | BaseException]:
        try:
            return self._enter(batch)
        finally:
            for prepared, _ in batch:  # the queue file has its own copy now (or it failed)
                prepared.discard()

    def _enter(self, batch: list[tuple[Prepared, asyncio.Future[str]]]) -> list[str | BaseException]:
        errors: dict[int, BaseException] = {}
        held = self._hold_first(batch, errors)
        items: list[tuple[Envelope, bytes | Spooled, str]] = []
        for i, (prepared, _) in enumerate(batch):
            if i in errors:
                continue
            try:
                items.append((prepared.envelope, prepared.content(), prepared.qid))
            except Exception as exc:  # e.g. a key that cannot sign: this message only
                errors[i] = exc
        entered: Iterator[str | BaseException]
        try:
            entered = iter(self.queue.enter_batch(items))
        except Exception as exc:
            entered = iter([exc] * len(items))
        results = [errors[i] if i in errors else next(entered) for i in range(len(batch))]
        for i in held:
            if isinstance(results[i], BaseException):  # not entered: its state file must not stay
                with contextlib.suppress(OSError):
                    os.unlink(self.queue.state_path(batch[i][0].qid))
        return results

    def _hold_first(
        self, batch: list[tuple[Prepared, asyncio.Future[str]]], errors: dict[int, BaseException]
    ) -> list[int]:
        """A message entered held (over its quota) has its state file written, durably, before its
        queue file appears in msg/: the scheduler never sees it unheld, and a crash in between
        leaves an orphan state file, which recovery drops (nothing was acknowledged)."""
        held = []
        for i, (prepared, _) in enumerate(batch):
            if prepared.hold is None or i in errors or self.queue.exists(prepared.qid):
                continue  # (the last: entered before, a retried commit; its state is what it is)
            state = state_file.State()
            state.hold(*prepared.hold)
            try:
                self.queue.write_state(prepared.qid, state)
            except OSError as exc:
                errors[i] = TempError(f"cannot write state file: {exc.strerror}; try again later")
                continue
            held.append(i)
        return held


def _finish(
    batch: list[tuple[Prepared, asyncio.Future[str]]],
    results: list[str | BaseException],
    on_entered: Callable[[str], None],
) -> None:
    """Hand the results to the event loop in one wake-up for the whole batch."""

    def resolve() -> None:
        for (_, future), result in zip(batch, results, strict=True):
            if not isinstance(result, BaseException):
                on_entered(result)
            if future.done():
                continue  # the SMTP session went away meanwhile (no 250 was sent)
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    loop = batch[0][1].get_loop()
    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more
