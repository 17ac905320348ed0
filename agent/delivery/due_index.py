"""The scheduler's index: which message is due when, one Python int per message.

An entry is `(due in ms) << 64 | id` in a heap, and the id alone (the same int object) in
`known`: the index of 100,000 queued messages must fit the daemon's 60 MB budget, so no tuples
and no id strings. `inflight` holds the ids being delivered (or held by pickup) as strings.
"""

from __future__ import annotations

import asyncio
import heapq

ID_MASK = (1 << 64) - 1


class DueIndex:
    def __init__(self, wake: asyncio.Event) -> None:
        self.heap: list[int] = []
        self.known: set[int] = set()  # in the heap, or parked in a lane
        self.inflight: set[str] = set()
        self.wake = wake

    def listed(self, qid: str) -> bool:
        return int(qid, 16) in self.known or qid in self.inflight

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
        if self.listed(qid):
            return False
        self.inflight.add(qid)
        return True

    def next_due(self) -> float:
        return (self.heap[0] >> 64) / 1000

    def pop(self) -> str:
        key = heapq.heappop(self.heap) & ID_MASK
        self.known.discard(key)
        return f"{key:016X}"

    def park(self, key: int) -> None:
        """Out of the heap into a lane's waiting line, and still listed: `add` leaves it alone."""
        self.known.add(key)

    def unpark(self, key: int) -> None:
        self.known.discard(key)
        self.add(f"{key:016X}")

    def all_due_now(self) -> None:
        # In place, and only the entries that are not due now already: a second list of 100,000
        # ints made here was a few MB the process kept after `queue flush` (freed blocks of a
        # size stay with the allocator), over the 60 MB budget.
        heap = self.heap
        for i, key in enumerate(heap):
            if key > ID_MASK:
                heap[i] = key & ID_MASK
        heapq.heapify(heap)

    def due_now(self, qids: set[str]) -> None:
        """These messages due now (their account is back), the rest as they were."""
        if not qids:
            return
        keys = {int(qid, 16) for qid in qids}
        for i, key in enumerate(self.heap):
            if key & ID_MASK in keys:
                self.heap[i] = key & ID_MASK
        heapq.heapify(self.heap)
        self.wake.set()
