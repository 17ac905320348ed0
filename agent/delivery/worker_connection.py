"""One delivery worker's own relay connection: opened when first needed, reused while it stays
usable, and reopened once when the relay had closed it while idle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from agent.config import RelayConfig
from agent.queue.message_source import MessageSource
from agent.queue.queue_file import Envelope
from agent.relay.capture import CaptureConnection
from agent.relay.connection import RelayConnection, RelayError, TxResult

Hop = RelayConnection | CaptureConnection


def last_hop(relay: RelayConfig, password: str | None, helo_name: str) -> Hop:
    """A relay connection; in capture mode the Maildir that stands in for it (never a socket)."""
    if relay.mode == "capture":
        return CaptureConnection(relay.capture_dir)
    return RelayConnection(relay, password, helo_name)


class WorkerConnection:
    def __init__(self, new: Callable[[], Hop]) -> None:
        self._new = new  # called for each connection, so a reload's relay settings apply
        self._conn: Hop | None = None

    async def _open(self) -> Hop:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        self._conn = None
        if conn is not None:
            await conn.close()
        conn = self._new()
        await conn.connect()
        self._conn = conn
        return conn

    async def send(
        self,
        env: Envelope,
        recipients: Sequence[str],
        source: MessageSource,
        before_mail: Callable[[], Awaitable[None]],
    ) -> TxResult:
        """One transaction; RelayError when the connection fails (every recipient is then temporary)."""
        args = (env.sender, recipients, source, dict(env.dsn))
        if isinstance(hop := await self._open(), CaptureConnection):  # staging: no relay at all
            return await hop.capture(env, recipients, source, before_mail)
        try:
            return await (await self._open()).send(*args, before_mail=before_mail)
        except RelayError as exc:
            if exc.stage != "reuse":
                raise
        # the relay closed our idle connection before anything was sent: reconnect once
        return await (await self._open()).send(*args, before_mail=before_mail)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
