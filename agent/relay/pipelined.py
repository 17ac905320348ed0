"""A transaction pipelined as RFC 2920 allows: MAIL, every RCPT and DATA in one write, then the body.

Two round trips instead of three plus one per recipient; the body is streamed (relay.body). Every
reply to the batch is read, even after a refusal, to stay in step with the relay.
"""

from __future__ import annotations

from aiosmtplib.response import SMTPResponse

from agent.queue.message_source import MessageSource
from agent.relay.body import send_body
from agent.relay.commands import Transaction
from agent.relay.link import RelayLink
from agent.relay.reply_reader import Replies
from agent.relay.results import RcptResult, final_results, rcpt_results, refuse_all


async def send_pipelined(link: RelayLink, replies: Replies, tx: Transaction) -> list[RcptResult]:
    """The body follows only on 354."""
    batch = tx.pipelined_batch()
    replies.start()
    try:
        return await _transaction(link, replies, batch, tx)
    finally:
        replies.active = False


async def _transaction(link: RelayLink, replies: Replies, batch: bytes, tx: Transaction) -> list[RcptResult]:
    mail, rcpts, data = await _batch_replies(link, replies, batch, len(tx.recipients))
    if mail.code != 250:
        results = refuse_all(mail, tx.recipients)
        accepted: list[str] = []
    else:
        results, accepted = rcpt_results(tx.recipients, rcpts)
    if accepted and data.code == 354:
        return results + await _body(link, replies, tx.message, accepted)
    if accepted:  # DATA refused: its reply decides for every accepted recipient
        return results + final_results(data, accepted)
    if data.code == 354 or mail.code == 250:
        await _abandon(link, replies, data.code == 354)
    return results


async def _batch_replies(
    link: RelayLink, replies: Replies, batch: bytes, n_rcpts: int
) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse]:
    """MAIL's, each RCPT's and DATA's reply."""
    timeout = link.cfg.timeout
    async with link.stage("mail"):
        link.write(batch)
        mail = link.check_421("mail", await replies.read(timeout))
    rcpts = []
    async with link.stage("rcpt"):
        for _ in range(n_rcpts):
            rcpts.append(link.check_421("rcpt", await replies.read(timeout)))
    async with link.stage("data"):
        data = link.check_421("data", await replies.read(timeout))
    return mail, rcpts, data


async def _body(
    link: RelayLink, replies: Replies, message: MessageSource, accepted: list[str]
) -> list[RcptResult]:
    async with link.stage("data"):
        await send_body(link, message)
        resp = link.check_421("data", await replies.read(link.cfg.data_timeout))
    return final_results(resp, accepted)


async def _abandon(link: RelayLink, replies: Replies, in_data: bool) -> None:
    """No recipient was accepted: end a DATA the relay opened anyway (an empty message it must
    refuse for lack of recipients), then RSET so the connection is ready for the next one."""
    if in_data:
        async with link.stage("data"):
            link.write(b".\r\n")
            link.check_421("data", await replies.read(link.cfg.data_timeout))
    async with link.stage("rset"):
        link.write(b"RSET\r\n")
        link.check_421("rset", await replies.read(link.cfg.timeout))
