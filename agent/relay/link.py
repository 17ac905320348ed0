"""The state of one relay connection, and the one place its failures become RelayError.

After any failure the connection is never reused: it is marked unusable and its transports are
aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from agent.config import RelayConfig
from agent.relay.failures import RelayError, is_tls_error, redact, relay_failure
from agent.relay.reply_reader import Replies
from agent.relay.results import reply_text


class RelayLink:
    def __init__(self, cfg: RelayConfig, password: str | None) -> None:
        self.cfg = cfg
        self.password = password
        self.smtp: aiosmtplib.SMTP | None = None
        self.usable = False
        self.replies: Replies | None = None  # set when the relay offers PIPELINING
        self.relay = f"{cfg.host}:{cfg.port}"
        self.tls_version: str | None = None
        self._transports: list[asyncio.BaseTransport] = []

    @contextlib.asynccontextmanager
    async def stage(self, stage: str) -> AsyncIterator[None]:
        """Translate every transport/protocol failure into RelayError, in this one place."""
        try:
            yield
        except (RelayError, asyncio.CancelledError):
            # Cancelled mid-command (shutdown): the protocol state is unknown, never reuse it.
            self.fail()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.fail()
            if stage == "connect" and self.cfg.tls == "implicit" and is_tls_error(exc):
                stage = "tls"
            raise relay_failure(stage, exc, self.cfg.host, self.relay, self.password) from None

    def write(self, data: bytes) -> None:
        """Send on the connection (inside a stage). The relay may have closed it together with its
        last reply: that is a disconnection like any other, not an AttributeError."""
        smtp = self.smtp
        if smtp is None or smtp.protocol is None or smtp.transport is None or smtp.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection closed by the relay")
        smtp.protocol.write(data)

    async def drain(self) -> None:
        """Wait until the transport has passed what was written on to the kernel (inside a stage),
        at most data_timeout: a relay that stops reading must not stall us, nor grow our buffers."""
        smtp = self.smtp
        if smtp is None or smtp.protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection closed by the relay")
        async with asyncio.timeout(self.cfg.data_timeout):
            # aiosmtplib's protocol is asyncio's FlowControlMixin (pause_writing/resume_writing,
            # which the pipelined reader passes on); _drain_helper is how StreamWriter.drain waits.
            await smtp.protocol._drain_helper()

    def error(self, stage: str, reply: str) -> RelayError:
        self.fail()
        return RelayError(stage, redact(reply, self.password), self.relay)

    def check_421(self, stage: str, resp: SMTPResponse) -> SMTPResponse:
        if resp.code == 421:
            raise self.error(stage, reply_text(resp.code, resp.message))
        return resp

    def fail(self) -> None:
        self.usable = False
        if self.smtp is not None:
            self.remember_transport()
            self.smtp.close()
        self.abort()

    def remember_transport(self) -> None:
        # aiosmtplib drops its reference when it closes on its own (timeout, 421, lost link), so we
        # keep ours, raw socket and TLS layer both, to abort them ourselves.
        if self.smtp is not None and self.smtp.transport is not None:
            self._transports.append(self.smtp.transport)

    def abort(self) -> None:
        # abort, not close: a graceful TLS shutdown waits for the peer and can outlive the event
        # loop, leaking the socket; after an error or QUIT there is nothing left to say.
        for transport in self._transports:
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        self._transports.clear()
