"""The daemon's one worker thread for the blocking disk work that is not a commit.

State writes (fsync), removals and status.json would stall the event loop; they
release the GIL, so on this thread they run beside it. One thread, not asyncio's
default pool: several threads running Python fight the loop for the GIL and cost more
daemon CPU per message (bench/results/code-comment-figures.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DiskThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-agent-disk")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Wait for the work already handed over."""
        self._pool.shutdown(wait=True)
