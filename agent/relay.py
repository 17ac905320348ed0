"""One connection to the smarthost and the transactions sent over it, with a result per recipient.

Contract (INTERFACE.md): only a 5xx reply to MAIL, RCPT or the final "." is permanent. Everything
that goes wrong with the connection itself (connect, TLS, EHLO, AUTH incl. 535, 421, timeouts, a
dropped link) raises RelayError, and the caller treats every recipient without a result as
temporary. TLS is always verified; credentials are never sent before TLS.

When the relay offers PIPELINING (RFC 2920) a transaction costs two round trips instead of three
plus one per recipient: MAIL, every RCPT and DATA go out in one write, then the body. aiosmtplib
cannot read more than one pending reply, so after AUTH our own Replies protocol reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from agent.config import RelayConfig
from agent.errors import TempError
from agent.smtp_client_lite import dot_stuff, xtext
from agent.smtp_pipeline import Replies

Outcome = Literal["sent", "temp", "perm"]
Progress = Callable[[str, str], None]

__all__ = ["Outcome", "RcptResult", "RelayConnection", "RelayError", "TxResult", "tls_context"]


@dataclass(frozen=True)
class RcptResult:
    address: str
    outcome: Outcome
    reply: str  # "250 2.0.0 Ok" / "550 5.1.1 no such user"


@dataclass(frozen=True)
class TxResult:
    results: tuple[RcptResult, ...]
    relay: str  # "host[ip]:port"


class RelayError(TempError):
    """The connection failed (not one recipient): defer everything not yet recorded.

    stage: "connect" | "tls" | "ehlo" | "starttls" | "auth" | "reuse" | "rset" | "mail" | "rcpt" |
    "data" | "quit". "reuse" means the relay had closed an idle connection before this transaction
    began: nothing was attempted, so the caller may reconnect and retry at once.
    """

    def __init__(self, stage: str, reply: str, relay: str) -> None:
        super().__init__(f"{stage} failed at {relay}: {reply}")
        self.stage = stage
        self.reply = reply
        self.relay = relay


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Verification is always on (certificate and host name); there is deliberately no switch."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@functools.lru_cache(maxsize=4)
def _shared_context(ca_file: str, ca_mtime_ns: int) -> ssl.SSLContext:
    return tls_context(ca_file)


def shared_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """One context per CA file (version): parsing the system CA store for every
    connection attempt costs CPU and, through malloc fragmentation, megabytes of RSS."""
    try:
        mtime = os.stat(ca_file).st_mtime_ns if ca_file else 0
    except OSError:
        mtime = -1  # let load_verify_locations report the error
    if mtime == -1:
        return tls_context(ca_file)
    return _shared_context(ca_file, mtime)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reply(code: int, message: str) -> str:
    return _one_line(f"{code} {message}")


def _describe(exc: BaseException) -> str:
    """A one-line reason; SSL and socket errors often hide the useful part in a cause."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply(exc.code, exc.message)
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, ssl.SSLCertVerificationError):
            return _one_line(f"certificate verification failed: {chain.verify_message}")
        if isinstance(chain, ssl.SSLError):
            return _one_line(f"TLS error: {chain.reason or chain}")
        if isinstance(chain, OSError) and chain.errno:
            return os.strerror(chain.errno)
        chain = chain.__cause__
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "timed out"
    return _one_line(str(exc)) or type(exc).__name__


def dsn_mail_options(dsn: Mapping[str, str]) -> list[str]:
    """RET/ENVID for MAIL; invalid values are dropped so a typo can never earn a permanent 501."""
    opts = []
    ret = dsn.get("ret", "").upper()
    if ret in ("FULL", "HDRS"):
        opts.append(f"RET={ret}")
    envid = dsn.get("envid", "")
    if envid and envid.isascii():
        opts.append(f"ENVID={xtext(envid)[:100]}")
    return opts


def dsn_rcpt_options(dsn: Mapping[str, str]) -> list[str]:
    notify = [n.strip().upper() for n in dsn.get("notify", "").split(",") if n.strip()]
    if notify == ["NEVER"] or (notify and set(notify) <= {"SUCCESS", "FAILURE", "DELAY"}):
        return ["NOTIFY=" + ",".join(notify)]
    return []


_CONTROL_CHARS = re.compile(rb"[\x00-\x1f\x7f]")


def _command(*args: bytes) -> bytes:
    for arg in args:
        if _CONTROL_CHARS.search(arg):  # as aiosmtplib does: CR/LF in an address would inject commands
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


class RelayConnection:
    def __init__(self, cfg: RelayConfig, password: str | None, helo_name: str) -> None:
        self._cfg = cfg
        self._password = password
        self._helo = helo_name or "localhost"
        self._smtp: aiosmtplib.SMTP | None = None
        self._usable = False
        self._replies: Replies | None = None  # set when the relay offers PIPELINING
        self._transports: list[asyncio.BaseTransport] = []
        self.relay = f"{cfg.host}:{cfg.port}"
        self.tls_version: str | None = None

    @property
    def usable(self) -> bool:
        """False once a connection-level error happened: open a new RelayConnection."""
        return self._usable and self._smtp is not None and self._smtp.is_connected

    def _redact(self, text: str) -> str:
        if self._password and self._password in text:
            text = text.replace(self._password, "***")
        return text

    @contextlib.asynccontextmanager
    async def _stage(self, stage: str) -> AsyncIterator[None]:
        """Translate every transport/protocol failure into RelayError, in this one place."""
        try:
            yield
        except (RelayError, asyncio.CancelledError):
            # Cancelled mid-command (shutdown): the protocol state is unknown, never reuse it.
            self._fail()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._fail()
            if stage == "connect" and self._cfg.tls == "implicit" and _is_tls_error(exc):
                stage = "tls"
            raise RelayError(stage, self._redact(_describe(exc)), self.relay) from None

    def _fail(self) -> None:
        self._usable = False
        if self._smtp is not None:
            self._remember_transport()
            self._smtp.close()
        self._abort()

    def _remember_transport(self) -> None:
        # aiosmtplib drops its reference when it closes on its own (timeout, 421, lost link), so we
        # keep ours, raw socket and TLS layer both, to abort them ourselves.
        if self._smtp is not None and self._smtp.transport is not None:
            self._transports.append(self._smtp.transport)

    def _abort(self) -> None:
        # abort, not close: a graceful TLS shutdown waits for the peer and can outlive the event
        # loop, leaking the socket; after an error or QUIT there is nothing left to say.
        for transport in self._transports:
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        self._transports.clear()

    def _error(self, stage: str, reply: str) -> RelayError:
        self._fail()
        return RelayError(stage, self._redact(reply), self.relay)

    async def connect(self, progress: Progress | None = None) -> None:
        """TCP (+TLS if implicit), EHLO, STARTTLS, EHLO, AUTH. progress(step, detail) after each."""
        report = progress or (lambda step, detail: None)
        cfg = self._cfg
        try:
            ctx = shared_tls_context(cfg.ca_file)
        except (OSError, ssl.SSLError) as exc:  # e.g. ca_file removed since the config was checked
            raise self._error("tls", f"cannot load relay.ca_file {cfg.ca_file}: {exc}") from None
        implicit = cfg.tls == "implicit"
        self._smtp = smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=implicit,
            start_tls=False,
            tls_context=ctx,
            timeout=cfg.timeout,
            local_hostname=self._helo,
        )
        async with self._stage("connect"):
            await smtp.connect()
        self._remember_transport()
        peer = smtp.get_transport_info("peername")
        self.relay = f"{cfg.host}[{peer[0]}]:{cfg.port}" if peer else self.relay
        report("connect", self.relay)
        if implicit:
            self.tls_version = self._tls_version()
            report("tls", self.tls_version or "")
        async with self._stage("ehlo"):
            await smtp.ehlo()
        if not implicit:
            await self._starttls(ctx)
            report("starttls", self.tls_version or "")
        if cfg.username:
            await self._auth()
            report("auth", cfg.username)
        if smtp.supports_extension("pipelining") and smtp.protocol is not None and smtp.transport is not None:
            self._replies = Replies(smtp.protocol)
            smtp.transport.set_protocol(self._replies)
        self._usable = True

    def _tls_version(self) -> str | None:
        assert self._smtp is not None
        obj = self._smtp.get_transport_info("ssl_object")
        return obj.version() if obj is not None else None

    async def _starttls(self, ctx: ssl.SSLContext) -> None:
        assert self._smtp is not None
        smtp = self._smtp
        if not smtp.supports_extension("starttls"):
            # Never fall back to plain text: that would expose the password and the mail.
            raise self._error("starttls", "relay does not offer STARTTLS (refusing to continue without TLS)")
        async with self._stage("starttls"):
            await smtp.starttls(server_hostname=self._cfg.host, tls_context=ctx)
        self._remember_transport()
        self.tls_version = self._tls_version()
        async with self._stage("ehlo"):
            await smtp.ehlo()

    async def _auth(self) -> None:
        assert self._smtp is not None
        smtp = self._smtp
        if self._password is None:
            raise self._error("auth", "no relay password configured (see `relay-agent credentials`)")
        methods = [m.lower() for m in smtp.server_auth_methods]
        # One attempt with one mechanism: retrying others after a 535 only trips the relay's lockout.
        async with self._stage("auth"):
            if "plain" in methods:
                await smtp.auth_plain(self._cfg.username, self._password)
            elif "login" in methods:
                await smtp.auth_login(self._cfg.username, self._password)
            else:
                raise self._error("auth", "relay offers neither AUTH PLAIN nor AUTH LOGIN")

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        dsn: Mapping[str, str] | None = None,
        before_mail: Callable[[], Awaitable[None]] | None = None,
    ) -> TxResult:
        smtp = self._smtp
        if smtp is None or not self._usable:
            raise RelayError("reuse", "connection is not open", self.relay)
        if not smtp.is_connected:
            raise self._error("reuse", "relay closed the idle connection")
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        mail_opts, rcpt_opts = self._options(utf8, message, dsn or {})
        enc = "utf-8" if utf8 else "ascii"
        if before_mail is not None:
            await before_mail()
        if self._replies is not None:
            batch = [_command(b"MAIL", b"FROM:<" + sender.encode(enc) + b">", *mail_opts)]
            batch += [_command(b"RCPT", b"TO:<" + r.encode(enc) + b">", *rcpt_opts) for r in recipients]
            batch.append(b"DATA\r\n")
            return await self._pipelined(self._replies, b"".join(batch), recipients, message)
        async with self._stage("mail"):
            resp = await smtp.execute_command(b"MAIL", b"FROM:<" + sender.encode(enc) + b">", *mail_opts)
        if resp.code == 421:
            raise self._error("mail", _reply(resp.code, resp.message))
        if resp.code != 250:
            outcome: Outcome = "perm" if resp.code >= 500 else "temp"
            reply = _reply(resp.code, resp.message)
            return self._result([RcptResult(r, outcome, reply) for r in recipients])
        results, accepted = await self._rcpts(recipients, rcpt_opts, enc)
        if not accepted:
            async with self._stage("rset"):
                await smtp.execute_command(b"RSET")
            return self._result(results)
        return self._result(results + await self._data(message, accepted))

    def _options(self, utf8: bool, message: bytes, dsn: Mapping[str, str]) -> tuple[list[bytes], list[bytes]]:
        assert self._smtp is not None
        smtp = self._smtp
        mail: list[str] = []
        rcpt: list[str] = []
        if smtp.supports_extension("size"):
            mail.append(f"SIZE={len(message)}")
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            mail.append("BODY=8BITMIME")
        # Without SMTPUTF8 on offer we still try: the relay's own reply decides (5xx = permanent).
        if utf8 and smtp.supports_extension("smtputf8"):
            mail.append("SMTPUTF8")
        if smtp.supports_extension("dsn"):
            mail += dsn_mail_options(dsn)
            rcpt += dsn_rcpt_options(dsn)
        return [o.encode() for o in mail], [o.encode() for o in rcpt]

    async def _rcpts(
        self, recipients: Sequence[str], opts: list[bytes], enc: str
    ) -> tuple[list[RcptResult], list[str]]:
        assert self._smtp is not None
        results: list[RcptResult] = []
        accepted: list[str] = []
        for rcpt in recipients:
            async with self._stage("rcpt"):
                resp = await self._smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode(enc) + b">", *opts)
            reply = _reply(resp.code, resp.message)
            if resp.code == 421:
                raise self._error("rcpt", reply)
            if resp.code in (250, 251):
                accepted.append(rcpt)
            else:
                results.append(RcptResult(rcpt, "perm" if resp.code >= 500 else "temp", reply))
        return results, accepted

    async def _data(self, message: bytes, accepted: list[str]) -> list[RcptResult]:
        assert self._smtp is not None
        async with self._stage("data"):
            try:
                resp = await self._smtp.data(message, timeout=self._cfg.data_timeout)
            except aiosmtplib.SMTPDataError as exc:  # a reply, not a connection failure
                resp = SMTPResponse(exc.code, exc.message)
        return self._final(self._check_421("data", resp), accepted)

    async def _pipelined(
        self, replies: Replies, batch: bytes, recipients: Sequence[str], message: bytes
    ) -> TxResult:
        """RFC 2920: batch is MAIL, every RCPT and DATA; the body follows only on 354."""
        replies.start()
        try:
            mail, rcpts, data = await self._batch_replies(replies, batch, len(recipients))
            if mail.code != 250:
                outcome: Outcome = "perm" if mail.code >= 500 else "temp"
                results = [RcptResult(r, outcome, _reply(mail.code, mail.message)) for r in recipients]
                accepted: list[str] = []
            else:
                results, accepted = self._rcpt_results(recipients, rcpts)
            if accepted and data.code == 354:
                return self._result(results + await self._pipelined_body(replies, message, accepted))
            if accepted:  # DATA refused: its reply decides for every accepted recipient
                return self._result(results + self._final(data, accepted))
            if data.code == 354 or mail.code == 250:
                await self._abandon(replies, data.code == 354)
            return self._result(results)
        finally:
            replies.active = False

    async def _batch_replies(
        self, replies: Replies, batch: bytes, n_rcpts: int
    ) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse]:
        """MAIL's, each RCPT's and DATA's reply; every one is read, even after a refusal, to stay in step."""
        timeout = self._cfg.timeout
        assert self._smtp is not None and self._smtp.protocol is not None
        async with self._stage("mail"):
            self._smtp.protocol.write(batch)
            mail = self._check_421("mail", await replies.read(timeout))
        rcpts = []
        async with self._stage("rcpt"):
            for _ in range(n_rcpts):
                rcpts.append(self._check_421("rcpt", await replies.read(timeout)))
        async with self._stage("data"):
            data = self._check_421("data", await replies.read(timeout))
        return mail, rcpts, data

    def _check_421(self, stage: str, resp: SMTPResponse) -> SMTPResponse:
        if resp.code == 421:
            raise self._error(stage, _reply(resp.code, resp.message))
        return resp

    @staticmethod
    def _rcpt_results(
        recipients: Sequence[str], replies: list[SMTPResponse]
    ) -> tuple[list[RcptResult], list[str]]:
        results: list[RcptResult] = []
        accepted: list[str] = []
        for rcpt, resp in zip(recipients, replies, strict=True):
            if resp.code in (250, 251):
                accepted.append(rcpt)
            else:
                outcome: Outcome = "perm" if resp.code >= 500 else "temp"
                results.append(RcptResult(rcpt, outcome, _reply(resp.code, resp.message)))
        return results, accepted

    async def _pipelined_body(
        self, replies: Replies, message: bytes, accepted: list[str]
    ) -> list[RcptResult]:
        assert self._smtp is not None and self._smtp.protocol is not None
        async with self._stage("data"):
            self._smtp.protocol.write(dot_stuff(message))
            resp = self._check_421("data", await replies.read(self._cfg.data_timeout))
        return self._final(resp, accepted)

    async def _abandon(self, replies: Replies, in_data: bool) -> None:
        """No recipient was accepted: end a DATA the relay opened anyway (an empty message it must
        refuse for lack of recipients), then RSET so the connection is ready for the next one."""
        assert self._smtp is not None and self._smtp.protocol is not None
        if in_data:
            async with self._stage("data"):
                self._smtp.protocol.write(b".\r\n")
                self._check_421("data", await replies.read(self._cfg.data_timeout))
        async with self._stage("rset"):
            self._smtp.protocol.write(b"RSET\r\n")
            self._check_421("rset", await replies.read(self._cfg.timeout))

    @staticmethod
    def _final(resp: SMTPResponse, accepted: list[str]) -> list[RcptResult]:
        reply = _reply(resp.code, resp.message)
        outcome: Outcome = "sent" if resp.code == 250 else "perm" if resp.code >= 500 else "temp"
        return [RcptResult(r, outcome, reply) for r in accepted]

    def _result(self, results: list[RcptResult]) -> TxResult:
        return TxResult(tuple(results), self.relay)

    async def quit(self) -> None:
        """QUIT, reporting failure (for `credentials check`); close() is the tolerant variant."""
        smtp = self._smtp
        if smtp is None or not smtp.is_connected:
            raise RelayError("quit", "not connected", self.relay)
        self._usable = False
        async with self._stage("quit"):
            await smtp.quit()
        self._abort()

    async def close(self) -> None:
        with contextlib.suppress(RelayError):
            if self._smtp is not None and self._smtp.is_connected:
                await self.quit()
        self._fail()
        await asyncio.sleep(0)  # let the transports finish closing


def _is_tls_error(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, ssl.SSLError):
            return True
        chain = chain.__cause__ or chain.__context__
    return False
