"""The daemon's end of the pickup FIFO: woken once per pickup round, not once per poke.

Waking a sleeping reader costs the writer time (measured: a plain `select` loop on the
FIFO made every poking process slower), and a sendmail pokes as the last thing it does.
So the first poke of a round wakes us and we stop listening; the sendmails of the burst
that follows write into the FIFO and nobody wakes. When the round is over, pokes waiting
in the FIFO mean another round (their files may have been renamed after our scan began),
and only an empty FIFO makes us listen again. asyncio's readers are level-triggered, so a
poke that lands between the last read and listening again still wakes us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from agent.queue import trigger


class PickupListener:
    def __init__(self, path: str, on_poke: Callable[[], None]) -> None:
        self.path = path
        self._on_poke = on_poke
        self._loop = asyncio.get_running_loop()
        self.fd = trigger.listen(path)
        self._loop.add_reader(self.fd, self._poked)

    def _poked(self) -> None:
        if self.take():
            self._loop.remove_reader(self.fd)
            self._on_poke()

    def take(self) -> bool:
        """Read every poke waiting in the FIFO; whether there was any."""
        return trigger.drain(self.fd) > 0

    def round_done(self) -> bool:
        """True: pokes came during the round, so another is due (we still do not listen).
        False: none came, and the next poke wakes us."""
        if self.take():
            return True
        self._loop.add_reader(self.fd, self._poked)
        return False

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
