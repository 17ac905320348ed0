"""The queue's figures for /metrics and /readyz: messages by state, the oldest's age, and per account
the age of the oldest message waiting to be sent (neither held nor failed).

One lean pass over the queue (queue/bulk.py's)."""

from __future__ import annotations

import time

from agent.queue.bulk import scan
from agent.queue.store import Queue
from agent.queue.view import state_of
from agent.status.figures import STATES, QueueFigures


def figures(queue: Queue, now: float | None = None) -> QueueFigures:
    now = time.time() if now is None else now
    counts = dict.fromkeys(STATES, 0)
    oldest = now
    waiting: dict[str, float] = {}
    for _qid, env, _size, state in scan(queue):
        shown = "queued" if state is None else state_of(state)
        counts[shown] += 1
        if shown == "failed":
            continue
        oldest = min(oldest, env.created)
        if shown != "held":  # due now or at its next attempt: waiting for the relay either way
            waiting[env.account] = max(waiting.get(env.account, 0.0), now - env.created)
    return QueueFigures(counts, max(0.0, now - oldest), waiting)
