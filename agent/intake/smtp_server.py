"""SMTP submission on the Unix socket and the loopback listener (aiosmtpd).

The handler only adapts SMTP to cleanup: aliases at RCPT time, everything
that depends on the message (From: domain policy, size, NUL) after DATA,
and `250` only once the message is durably queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from agent.errors import AgentError
from agent.intake import bodystream, quotas
from agent.intake.cleanup import Cleanup, Prepared
from agent.intake.smtp_data import SpoolingData
from agent.queue.spool import Spool

log = logging.getLogger("relay-agent")

DSN_PARAMS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})
# anything beyond a plain dot-atom address goes to aiosmtpd's full parser
SPECIAL = frozenset(' "()<>[]\\,;:\t\r\n\0')


class SubmitSMTP(SpoolingData):
    """aiosmtpd's server plus DSN parameters, ETRN, the peer's uid and a big DATA spooled."""

    # Local clients send lines over 998 octets; cleanup re-encodes them before signing.
    line_length_limit = 1 << 20

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        setattr(self.session, "peer_uid", peer_uid(transport))  # noqa: B010 - aiosmtpd's Session has no slot for it

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every address with email's header parser (and defines a class
        # per call): a third of the receive cost. Plain <local@domain> needs none of it.
        if arg.startswith("<"):
            end = arg.find(">")
            addr = arg[1:end]
            if end > 0 and addr and not any(c in SPECIAL for c in addr) and addr.count("@") == 1:
                local = addr.partition("@")[0]
                if not self.local_part_limit or len(local) <= self.local_part_limit:
                    return addr, arg[end + 1 :].strip()
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    def _getparams(self, params: Any) -> Any:
        # aiosmtpd refuses parameters it does not know; DSN ones are ours to keep.
        result = super()._getparams(params)
        if result is not None:
            for key in DSN_PARAMS:
                result.pop(key, None)
        return result

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and _injection(arg):
            await self.push("501 5.5.2 Syntax error: CR, LF or NUL in the address")
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and _injection(arg):
            await self.push("501 5.5.2 Syntax error: CR, LF or NUL in the address")
            return
        await super().smtp_RCPT(arg)

    async def smtp_ETRN(self, arg: str) -> None:
        status = await self._call_handler_hook("ETRN", arg)
        await self.push(status)


def _injection(arg: str) -> bool:
    # aiosmtpd's parser would silently drop a bare CR inside <...>: refuse instead
    return any(c in arg for c in "\r\n\0")


def peer_uid(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return -1
    return socket_peer_uid(sock)


def socket_peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of an AF_UNIX socket (-1: unknown)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1
    return int(struct.unpack("3i", creds)[1])


def _content(envelope: Envelope) -> bytes | Spool:
    spool = getattr(envelope, "spool", None)
    if isinstance(spool, Spool):
        return spool
    content = envelope.original_content or envelope.content or b""
    return content if isinstance(content, bytes) else content.encode()


def _dsn(options: list[str], keys: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for opt in options:
        k, _, v = opt.partition("=")
        if k.upper() in keys and v:
            out.append((k.lower(), v))
    return out


class Handler:
    def __init__(
        self,
        cleanup: Callable[[], Cleanup],
        on_flush: Callable[[], None],
        origin: str,
        commit: Callable[[Prepared], Awaitable[str]],
    ) -> None:
        self.cleanup = cleanup
        self.on_flush = on_flush
        self.origin = origin
        self.commit = commit

    def spool_dir(self) -> str:
        """Where a big DATA is spooled (agent.intake.smtp_data): the queue's tmp/."""
        return self.cleanup().queue.tmp

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()
        responses += ["250-PIPELINING", "250-DSN", "250-ENHANCEDSTATUSCODES", "250-ETRN"]
        responses.append(last)
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        cleanup = self.cleanup()
        over = quotas.shared(cleanup.queue.path).would_refuse(cleanup.cfg, getattr(session, "peer_uid", -1))
        if over is not None:  # said now, not after the whole message
            return over.refusal().smtp_reply()
        try:
            envelope.mail_from = cleanup.sender(address) if address not in ("<>", "") else ""
        except AgentError as exc:
            return exc.smtp_reply()
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            self.cleanup().recipient(address)  # refuse unknown local names now, per recipient
        except AgentError as exc:
            return exc.smtp_reply()
        envelope.rcpt_tos.append(address)  # cleanup resolves aliases again at DATA (after a reload too)
        envelope.rcpt_options.append(" ".join(options))
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        dsn = _dsn(envelope.mail_options, ("RET", "ENVID"))
        notify = _dsn(" ".join(envelope.rcpt_options).split(), ("NOTIFY",))
        if notify:
            dsn.append(notify[0])
        uid = getattr(session, "peer_uid", -1)
        return await self.accept(
            envelope.mail_from or "", list(envelope.rcpt_tos), _content(envelope), uid, tuple(dsn)
        )

    async def accept(
        self,
        sender: str,
        rcpts: list[str],
        content: bytes | Spool,
        uid: int,
        dsn: tuple[tuple[str, str], ...],
    ) -> str:
        """Queue one message (SMTP's DATA, or a whole hand-over on the drop socket); the reply."""
        try:
            cleanup = self.cleanup()
            if isinstance(content, Spool):  # big: a chunk at a time, in cleanup's threads
                job = functools.partial(
                    cleanup.prepare_spool, sender, rcpts, content, uid=uid, dsn=dsn, origin=self.origin
                )
                prepared = await bodystream.in_thread(job, Prepared.discard)
            else:  # the Python part here, on the loop; signing and the durable write beside it
                prepared = cleanup.prepare(sender, rcpts, content, uid=uid, dsn=dsn, origin=self.origin)
            prepared = within_quota(cleanup, prepared, uid)
            qid = await self.commit(prepared)
        except AgentError as exc:
            log.info("refused from %s uid=%d: %s", self.origin, uid, exc.message)
            return exc.smtp_reply()
        except Exception:
            log.exception("unexpected error while queueing")
            return "451 4.3.0 internal error; try again later"
        size = content.size if isinstance(content, Spool) else len(content)
        how = "queued" if prepared.hold is None else "held"
        log.info("%s: from=<%s>, nrcpt=%d, size=%d, uid=%d (%s)", qid, sender, len(rcpts), size, uid, how)
        return f"250 2.0.0 Ok: queued as {qid}"

    async def handle_ETRN(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        self.on_flush()
        return "250 2.0.0 Queuing started"


def within_quota(cleanup: Cleanup, prepared: Prepared, uid: int) -> Prepared:
    """The message counted against its submitter's quota: as it was, or over the quota, held
    (limits.over_quota = "hold") or refused (QuotaError: 452 4.7.1, sendmail exits 75)."""
    over = quotas.shared(cleanup.queue.path).admit(cleanup.cfg, uid)
    if over is None:
        return prepared
    if cleanup.cfg.limits.over_quota == "refuse":
        prepared.discard()
        raise over.refusal()
    return dataclasses.replace(prepared, hold=(over.held_for, over.reason()))


def factory(handler: Handler, cfg_hostname: str, max_size: int) -> Callable[[], SubmitSMTP]:
    def make() -> SubmitSMTP:
        return SubmitSMTP(
            handler,
            hostname=cfg_hostname,
            ident="relay-agent ESMTP",
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
        )

    return make
