"""A transaction sent one command at a time, for relays that do not offer PIPELINING."""

from __future__ import annotations

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from agent.queue.message_source import MessageSource
from agent.relay.body import send_body
from agent.relay.commands import Transaction
from agent.relay.link import RelayLink
from agent.relay.results import RcptResult, final_results, rcpt_results, refuse_all


async def send_plain(link: RelayLink, smtp: aiosmtplib.SMTP, tx: Transaction) -> list[RcptResult]:
    async with link.stage("mail"):
        resp = await smtp.execute_command(*tx.mail_args())
    if link.check_421("mail", resp).code != 250:
        return refuse_all(resp, tx.recipients)
    results, accepted = await _rcpts(link, smtp, tx)
    if not accepted:
        async with link.stage("rset"):
            await smtp.execute_command(b"RSET")
        return results
    return results + await _data(link, smtp, tx.message, accepted)


async def _rcpts(
    link: RelayLink, smtp: aiosmtplib.SMTP, tx: Transaction
) -> tuple[list[RcptResult], list[str]]:
    replies: list[SMTPResponse] = []
    for rcpt in tx.recipients:
        async with link.stage("rcpt"):
            resp = await smtp.execute_command(*tx.rcpt_args(rcpt))
        replies.append(link.check_421("rcpt", resp))
    return rcpt_results(tx.recipients, replies)


async def _data(
    link: RelayLink, smtp: aiosmtplib.SMTP, message: MessageSource, accepted: list[str]
) -> list[RcptResult]:
    """DATA, then the message streamed from its file (aiosmtplib's data() wants it whole)."""
    async with link.stage("data"):
        resp = await smtp.execute_command(b"DATA")
        if link.check_421("data", resp).code == 354:
            protocol = smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection closed by the relay")
            # as aiosmtplib's own DATA does before the body: a reply that arrives while the body
            # is still going out (a relay that gives up early) is kept, not dropped as unsolicited
            protocol._response_pending = True
            await send_body(link, message)
            resp = await protocol.read_response(timeout=link.cfg.data_timeout)
    return final_results(link.check_421("data", resp), accepted)
