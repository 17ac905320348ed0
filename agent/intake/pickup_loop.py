"""When pickup runs: a round soon after each poke, else a poll.

A poke on the trigger FIFO (or from the drop socket, or a reload) wakes the loop; it then
waits a moment so the rest of a burst of sendmails lands and shares one group commit.
Without a poke it polls, for maildrop writers that do not poke (agent.intake.pickup_round says
what a round does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.intake.pickup_listener import PickupListener
from agent.intake.pickup_round import Pickup

INTERVAL = 0.5  # maildrop poll without a trigger FIFO (no socket configured)
INTERVAL_TRIGGERED = 5.0  # with one, sendmail pokes; the poll only catches writers that do not
GATHER = 0.05  # after a poke; well inside the interval between sends at the default rate
GATHER_MAX = 0.25  # while pokes keep coming (a burst), gather at most this long


class PickupLoop:
    """Runs `pickup`'s rounds on `maildrop()` (read each round: a reload may change it) until `stop`."""

    def __init__(self, pickup: Pickup, maildrop: Callable[[], str], stop: asyncio.Event) -> None:
        self.pickup = pickup
        self.maildrop = maildrop
        self.stop = stop
        self.wake = asyncio.Event()  # set from the loop's thread only (others: call_soon_threadsafe)
        self.trigger: PickupListener | None = None

    def listen(self, fifo: str) -> None:
        """Pokes on the trigger FIFO at `fifo` wake the loop (before anyone can connect)."""
        self.trigger = PickupListener(fifo, self.wake.set)

    def close(self) -> None:
        if self.trigger is not None:
            self.trigger.close()
            self.trigger = None

    async def run(self) -> None:
        while not self.stop.is_set():
            if self.wake.is_set():
                await self._gather()
            self.wake.clear()
            self._took_pokes()  # this scan covers every poke so far
            await self.pickup.round(self.maildrop())
            if self.trigger is not None and self.trigger.round_done():
                self.wake.set()
            await self._pause()

    async def _gather(self) -> None:
        """After a poke, let the rest of a burst of sendmails land: they share a group
        commit, and our work on them does not compete with the senders still running.
        Gathering goes on while pokes keep coming, for at most GATHER_MAX."""
        until = time.monotonic() + GATHER_MAX
        while True:
            await asyncio.sleep(GATHER)
            if not self._took_pokes() or time.monotonic() >= until:
                return

    def _took_pokes(self) -> bool:
        return self.trigger is not None and self.trigger.take()

    async def _pause(self) -> None:
        """Until a poke on the trigger, a stop, or the next poll (for writers that do not poke)."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self.wake, self.stop)]
        poll = INTERVAL if self.trigger is None else INTERVAL_TRIGGERED
        await asyncio.wait(waits, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
