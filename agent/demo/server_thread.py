"""A TCP server on its own asyncio event loop in a daemon thread, driven from synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class ServerThread:
    """A TCP server on its own event loop in a daemon thread.

    `factory` is called on that loop for each connection; `on_unlisten`, also on the loop,
    when listening stops (to cut connections the caller keeps track of).
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        on_unlisten: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._factory = factory
        self._tls = tls  # implicit TLS, from the first byte
        self._on_unlisten = on_unlisten
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        self.listen()

    def stop(self, timeout: float = 10) -> None:
        """Stop listening, cancel what still runs on the loop, end the thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self.call(self._shutdown(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop = self._thread = None
        self._server = None  # so that start() listens again even if the shutdown failed

    def listen(self) -> None:
        """Listen unless listening already: on .port, a free one chosen the first time if it is 0."""
        if self._server is None:
            self.call(self._listen())

    def unlisten(self) -> None:
        self.call(self._unlisten())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        # reuse_address: listening again on the same port must not wait out TIME_WAIT.
        self._server = await loop.create_server(
            self._factory, self.host, self.port, ssl=self._tls, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._on_unlisten is not None:
            self._on_unlisten()
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        await self._unlisten()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
