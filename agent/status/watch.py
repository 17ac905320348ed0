"""The daemon's side of /healthz and the queue gauges: a heartbeat every second from the event loop,
and the queue's figures refreshed now and then (on the disk thread: the caller's `refresh`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from agent.status.figures import QueueFigures
from agent.status.health import Health
from agent.status.metrics import Metrics

BEAT = 1.0
IDLE_REFRESH = 5.0  # without a change the daemon saw (a `queue hold` from the CLI, time passing)
REFRESH_SHARE = 20  # never more than one 20th of the time scanning: a big queue costs little


async def loop(
    metrics: Metrics,
    health: Health,
    refresh: Callable[[], Awaitable[QueueFigures]],
    moves: Callable[[], int],
    stop: asyncio.Event,
) -> None:
    """`moves`: a count that grows whenever mail moves (queued, sent, deferred...)."""
    last_scan, took, seen = -IDLE_REFRESH, 0.0, -1
    while not stop.is_set():
        health.beat()
        since = time.monotonic() - last_scan
        if since >= max(REFRESH_SHARE * took, IDLE_REFRESH if moves() == seen else BEAT):
            seen, last_scan = moves(), time.monotonic()
            figures = await refresh()
            took = time.monotonic() - last_scan
            metrics.show_queue(figures)
            health.waiting = figures.waiting
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), BEAT)
