"""What the scheduler says about each attempt: the log line per recipient, the counters, and the
bounce it queues (through cleanup, with the failed message's relay account)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agent.delivery.decisions import Disposition, Entry, Outcome, Verdict
from agent.delivery.pushback import change_line
from agent.errors import AgentError, TempError
from agent.intake.cleanup import Cleanup, Prepared
from agent.mail import bounce
from agent.mail.smtp_text import clean_line
from agent.queue import queue_file, state_file
from agent.queue.message_source import MessageSource
from agent.status.counters import Counters

log = logging.getLogger("relay-agent")

DEFAULT_DSN = {Verdict.SENT: "2.0.0", Verdict.DEFERRED: "4.0.0", Verdict.FAILED: "5.0.0"}


def count(counters: Counters, out: Outcome, account: str) -> None:
    if out.recipients(Verdict.FAILED):
        counters.bump("bounced", account=account)
    if out.disposition is Disposition.DEFERRED:
        counters.bump("deferred", account=account)
    if out.recipients(Verdict.SENT):
        counters.bump("sent", account=account)


def rate_changed(counters: Counters, account: str, old: float, new: float, why: str) -> None:
    """An account's effective rate changed: its one log line, and the metrics' gauge."""
    (log.warning if new < old else log.info)("%s", change_line(account, old, new, why))
    counters.rate(account, new)


def log_entry(qid: str, entry: Entry, relay: str, account: str, delay: float) -> None:
    log.info(
        "%s: to=<%s>, relay=%s, account=%s, delay=%.2f, dsn=%s, status=%s (%s)",
        qid,
        entry.address,
        relay or "none",
        account,
        delay,
        bounce.status_of(entry.reply, DEFAULT_DSN[entry.verdict]),
        entry.verdict.value,
        clean_line(entry.reply),
    )


async def queue_bounce(
    qid: str,
    env: queue_file.Envelope,
    source: MessageSource,
    state: state_file.State,
    relay: str,
    cleanup: Cleanup,
    commit: Callable[[Prepared], Awaitable[str]],
    hostname: str,
) -> bool:
    """Queue one DSN for the recipients in state.bounce_due; False to try again later (the caller
    then empties bounce_due and writes the state)."""
    failed = [
        bounce.FailedRecipient(env.recipients[i], state.rcpt_error(i), remote=bool(relay))
        for i in state.bounce_due
    ]
    report = bounce.build(
        qid=qid,
        sender=env.sender,
        failed=failed,
        original=source.prefix(bounce.SIZE_LIMIT),  # never a whole big message in memory
        original_size=source.size,
        hostname=hostname,
        mailer_daemon=cleanup.mailer_daemon(),
        relay=relay,
        arrival=env.created,
        headers_only=env.dsn_param("ret").upper() != "FULL",
    )
    try:
        # with the failed message's account: the relay authorized that account for its sender
        prepared = cleanup.prepare("", [env.sender], report, origin="bounce", account=env.account)
        bqid = await commit(prepared)
    except TempError as exc:
        log.warning("%s: bounce to <%s> not queued yet: %s", qid, env.sender, exc.message)
        return False
    except AgentError as exc:  # e.g. refused by policy: retrying cannot help
        log.error("%s: cannot queue the bounce to <%s>: %s", qid, env.sender, exc.message)
        bqid = ""
    if bqid:
        log.info("%s: sender non-delivery notification: %s", qid, bqid)
    return True
