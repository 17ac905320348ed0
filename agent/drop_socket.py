"""The drop socket (`<socket>.drop`): sendmail's one-round-trip hand-over to the daemon.

Users who cannot fsync the 1733 maildrop (PHP-FPM, most cron jobs) give their message
to the running daemon. Over SMTP that takes three round trips, aiosmtpd's set-up of
each connection (it introspects the handler anew, ~0.5 ms) and its line-at-a-time
DATA reader. Here the client writes exactly the bytes it would have written into the
maildrop (agent.envelope's format), shuts down its side, and reads one SMTP reply line.

The bytes are untrusted input, read with the maildrop's size limit and parser; the
sender's uid comes from SO_PEERCRED, never from the uid line the client wrote. What
is accepted goes through the same cleanup and commit as an SMTP DATA.
"""

from __future__ import annotations

import asyncio

from agent import envelope as fmt
from agent.server import Handler, peer_uid

IDLE_TIMEOUT = 300.0  # as the SMTP listener's: a client that never finishes is dropped


class DropProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, max_size: int) -> None:
        self.handler = handler
        self.limit = max_size + fmt.HEADER_SLACK  # as for a maildrop file
        self.chunks: list[bytes] = []
        self.size = 0
        self.uid = -1
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.uid = peer_uid(transport)
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.chunks.clear()
            self._reply("552 5.3.4 message exceeds the size limit (limits.max_message_size)")
            return
        self.chunks.append(data)

    def eof_received(self) -> bool:
        if self.size <= self.limit:
            self.task = asyncio.ensure_future(self._accept(b"".join(self.chunks)))
            self.chunks.clear()
        return True  # keep our side open for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    async def _accept(self, data: bytes) -> None:
        try:
            env, message = fmt.decode(data)
        except fmt.FormatError as exc:
            reply = f"554 5.6.0 malformed hand-over: {exc}"
        else:
            reply = await self.handler.accept(env.sender, list(env.recipients), message, self.uid, env.dsn)
        self._reply(reply)

    def _reply(self, line: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line.encode("utf-8", "replace") + b"\r\n")
            self.transport.close()
