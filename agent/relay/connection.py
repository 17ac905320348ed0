"""One connection to the smarthost and the transactions sent over it, with a result per recipient.

The rule: only a 5xx reply to MAIL, RCPT or the final "." is permanent. Everything
that goes wrong with the connection itself (connect, TLS, EHLO, AUTH incl. 535, 421, timeouts, a
dropped link) raises RelayError, and the caller treats every recipient without a result as
temporary. TLS is always verified; credentials are never sent before TLS.

When the relay offers PIPELINING (RFC 2920) a transaction costs two round trips instead of three
plus one per recipient: MAIL, every RCPT and DATA go out in one write, then the body.

The work is done by the modules beside this one: handshake (connect, STARTTLS, AUTH), plain and
pipelined (a transaction), link (connection state, failures), commands (what is sent), results
(per-recipient results), body (the message streamed from its queue file, dot-stuffed as it goes),
failures and tls; this module keeps the names callers import.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence

from agent.config import RelayConfig
from agent.queue.message_source import MessageSource
from agent.relay.commands import dsn_mail_options, dsn_rcpt_options, new_transaction
from agent.relay.failures import RelayError
from agent.relay.handshake import Progress, handshake
from agent.relay.link import RelayLink
from agent.relay.pipelined import send_pipelined
from agent.relay.plain import send_plain
from agent.relay.results import Outcome, RcptResult, TxResult
from agent.relay.tls import shared_tls_context, tls_context

__all__ = [
    "Outcome",
    "Progress",
    "RcptResult",
    "RelayConnection",
    "RelayError",
    "TxResult",
    "dsn_mail_options",
    "dsn_rcpt_options",
    "shared_tls_context",
    "tls_context",
]


class RelayConnection:
    def __init__(self, cfg: RelayConfig, password: str | None, helo_name: str) -> None:
        self._link = RelayLink(cfg, password)
        self._helo = helo_name or "localhost"

    @property
    def relay(self) -> str:
        """host:port, then host[ip]:port once connected."""
        return self._link.relay

    @property
    def tls_version(self) -> str | None:
        return self._link.tls_version

    @property
    def usable(self) -> bool:
        """False once a connection-level error happened: open a new RelayConnection."""
        link = self._link
        return link.usable and link.smtp is not None and link.smtp.is_connected

    async def connect(self, progress: Progress | None = None) -> None:
        """TCP (+TLS if implicit), EHLO, STARTTLS, EHLO, AUTH. progress(step, detail) after each."""
        await handshake(self._link, self._helo, progress or (lambda step, detail: None))

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes | MessageSource,
        dsn: Mapping[str, str] | None = None,
        before_mail: Callable[[], Awaitable[None]] | None = None,
    ) -> TxResult:
        """One transaction; a MessageSource read from its queue file is streamed, never held whole.
        A file's source must be scan()ned first (for BODY=8BITMIME)."""
        link = self._link
        smtp = link.smtp
        if smtp is None or not link.usable:
            raise RelayError("reuse", "connection is not open", link.relay)
        if not smtp.is_connected:
            raise link.error("reuse", "relay closed the idle connection")
        if isinstance(message, bytes):
            message = MessageSource.from_bytes(message)
        tx = new_transaction(sender, recipients, message, dsn or {}, smtp.supports_extension)
        if before_mail is not None:
            await before_mail()
        if link.replies is not None:
            results = await send_pipelined(link, link.replies, tx)
        else:
            results = await send_plain(link, smtp, tx)
        return TxResult(tuple(results), link.relay)

    async def quit(self) -> None:
        """QUIT, reporting failure (for `credentials check`); close() is the tolerant variant."""
        link = self._link
        smtp = link.smtp
        if smtp is None or not smtp.is_connected:
            raise RelayError("quit", "not connected", link.relay)
        link.usable = False
        async with link.stage("quit"):
            await smtp.quit()
        link.abort()

    async def close(self) -> None:
        link = self._link
        with contextlib.suppress(RelayError):
            if link.smtp is not None and link.smtp.is_connected:
                await self.quit()
        link.fail()
        await asyncio.sleep(0)  # let the transports finish closing
