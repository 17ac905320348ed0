"""Opening a relay connection: TCP (+TLS if implicit), EHLO, STARTTLS, EHLO, AUTH.

TLS is always verified; credentials are never sent before TLS. When the relay offers PIPELINING,
our own Replies protocol is put in front of aiosmtplib's once AUTH is done, since aiosmtplib cannot
read more than one pending reply.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiosmtplib

from agent.relay.link import RelayLink
from agent.relay.reply_reader import Replies
from agent.relay.tls import shared_tls_context

Progress = Callable[[str, str], None]


async def handshake(link: RelayLink, helo: str, report: Progress) -> None:
    """report(step, detail) after each step."""
    cfg = link.cfg
    try:
        ctx = shared_tls_context(cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:  # e.g. ca_file removed since the config was checked
        raise link.error("tls", f"cannot load relay.ca_file {cfg.ca_file}: {exc}") from None
    implicit = cfg.tls == "implicit"
    smtp = await _connect(link, helo, ctx, implicit)
    report("connect", link.relay)
    if implicit:
        link.tls_version = _tls_version(smtp)
        report("tls", link.tls_version or "")
    async with link.stage("ehlo"):
        await smtp.ehlo()
    if not implicit:
        await _starttls(link, smtp, ctx)
        report("starttls", link.tls_version or "")
    if cfg.username:
        await _auth(link, smtp)
        report("auth", cfg.username)
    if smtp.supports_extension("pipelining") and smtp.protocol is not None and smtp.transport is not None:
        link.replies = Replies(smtp.protocol)
        smtp.transport.set_protocol(link.replies)
    link.usable = True


async def _connect(link: RelayLink, helo: str, ctx: ssl.SSLContext, implicit: bool) -> aiosmtplib.SMTP:
    cfg = link.cfg
    link.smtp = smtp = aiosmtplib.SMTP(
        hostname=cfg.host,
        port=cfg.port,
        use_tls=implicit,
        start_tls=False,
        tls_context=ctx,
        timeout=cfg.timeout,
        local_hostname=helo,
    )
    async with link.stage("connect"):
        await smtp.connect()
    link.remember_transport()
    peer = smtp.get_transport_info("peername")
    link.relay = f"{cfg.host}[{peer[0]}]:{cfg.port}" if peer else link.relay
    return smtp


def _tls_version(smtp: aiosmtplib.SMTP) -> str | None:
    obj = smtp.get_transport_info("ssl_object")
    return obj.version() if obj is not None else None


async def _starttls(link: RelayLink, smtp: aiosmtplib.SMTP, ctx: ssl.SSLContext) -> None:
    if not smtp.supports_extension("starttls"):
        # Never fall back to plain text: that would expose the password and the mail.
        raise link.error("starttls", "relay does not offer STARTTLS (refusing to continue without TLS)")
    async with link.stage("starttls"):
        await smtp.starttls(server_hostname=link.cfg.host, tls_context=ctx)
    link.remember_transport()
    link.tls_version = _tls_version(smtp)
    async with link.stage("ehlo"):
        await smtp.ehlo()


async def _auth(link: RelayLink, smtp: aiosmtplib.SMTP) -> None:
    username, password = link.cfg.username, link.password
    if password is None:
        raise link.error("auth", "no relay password configured (see `relay-agent credentials`)")
    methods = [m.lower() for m in smtp.server_auth_methods]
    # One attempt with one mechanism: retrying others after a 535 only trips the relay's lockout.
    async with link.stage("auth"):
        if "plain" in methods:
            await smtp.auth_plain(username, password)
        elif "login" in methods:
            await smtp.auth_login(username, password)
        else:
            raise link.error("auth", "relay offers neither AUTH PLAIN nor AUTH LOGIN")
