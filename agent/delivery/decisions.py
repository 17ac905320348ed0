"""What becomes of a queued message, decided without I/O: the triage before a send, and the
outcome of a transaction for each recipient and for the message.

Pure: no clock (`now` is passed in), no randomness (the backoff's jitter is drawn by the caller
and passed as `spread`), no logging, no files. The scheduler applies the verdicts: it writes or
removes the state, bumps the counters, logs, requeues and queues the bounce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from agent.config import QueueConfig
from agent.delivery import backoff
from agent.queue import state_file
from agent.queue.queue_file import Envelope
from agent.relay.results import Outcome as RelayOutcome
from agent.relay.results import RcptResult


class Triage(Enum):
    """What to do with a message taken from the index, before any send."""

    BOUNCE_OWED = "bounce owed"  # a bounce the queue could not take yet: queued first, then triage again
    HELD = "held"  # `queue hold`: left alone, not scheduled until released
    FAILED_KEPT = "failed, kept"  # listed as failed until failed_keep has passed: look again then
    FAILED_GONE = "failed, gone"  # failed and kept long enough: removed
    NOTHING_PENDING = "nothing pending"  # every recipient recorded already (a crash after the last)
    EXPIRED = "expired"  # older than max_age: every pending recipient fails, with a bounce
    SEND = "send"


def index_due(state: state_file.State, settings: QueueConfig) -> float | None:
    """When a message found on disk (at start, on flush) is due; None while it is held."""
    if state.held:
        return None
    if state.bounce_due:
        return 0.0  # a bounce the queue could not take before the restart
    return state.failed_at + settings.failed_keep if state.state == "failed" else state.next_attempt


def triage(state: state_file.State, env: Envelope, now: float, settings: QueueConfig) -> Triage:
    if state.bounce_due:
        return Triage.BOUNCE_OWED
    if state.held:
        return Triage.HELD
    if state.state == "failed":
        gone = backoff.failed_gone(state.failed_at, now, settings.failed_keep)
        return Triage.FAILED_GONE if gone else Triage.FAILED_KEPT
    if not state.pending(len(env.recipients)):
        return Triage.NOTHING_PENDING
    if backoff.expired(env.created, now, settings.max_age):
        return Triage.EXPIRED
    return Triage.SEND


def expiry_reply(state: state_file.State, env: Envelope, now: float) -> str:
    age = int(now - env.created)
    return f"554 5.4.7 message expired after {age}s in the queue ({state.last_error or 'no reply'})"


def for_pending(
    state: state_file.State, env: Envelope, outcome: RelayOutcome, reply: str
) -> list[RcptResult]:
    """The same result for every pending recipient (an expiry, a connection that failed)."""
    return [RcptResult(env.recipients[i], outcome, reply) for i in state.pending(len(env.recipients))]


class Verdict(Enum):
    """One recipient after one transaction; the value is the log's status word."""

    SENT = "sent"
    DEFERRED = "deferred"  # still pending, with the reply as its reason
    FAILED = "bounced"  # permanent: the sender gets a bounce (unless NoBounce says why not)


_VERDICT: dict[RelayOutcome, Verdict] = {
    "sent": Verdict.SENT,
    "temp": Verdict.DEFERRED,
    "perm": Verdict.FAILED,
}
_RCPT_CODE = {
    Verdict.SENT: state_file.SENT,
    Verdict.DEFERRED: state_file.PENDING,
    Verdict.FAILED: state_file.FAILED,
}


class Disposition(Enum):
    """The message after the transaction."""

    REMOVE = "remove"  # every recipient sent: queue file and state go
    FAILED = "failed"  # nothing pending, some failed: listed as failed until failed_keep
    DEFERRED = "deferred"  # some still pending: tried again at Outcome.due


class NoBounce(Enum):
    """Why a permanent failure gets no bounce; the value is the log's reason."""

    NULL_SENDER = "null sender"
    DISABLED = "bounces disabled for this message"


@dataclass(frozen=True)
class Entry:
    """One pending recipient's verdict, for its log line."""

    index: int
    address: str
    verdict: Verdict
    reply: str


@dataclass(frozen=True)
class Outcome:
    state: state_file.State  # the new state (a copy; the input state is left alone)
    entries: tuple[Entry, ...]  # one per recipient that was pending, in recipient order
    disposition: Disposition
    due: float  # when the scheduler looks at the message again (unless REMOVE)
    no_bounce: NoBounce | None  # set when recipients failed but the sender gets no bounce

    def recipients(self, verdict: Verdict) -> tuple[int, ...]:
        return tuple(e.index for e in self.entries if e.verdict is verdict)


def no_bounce(env: Envelope, settings: QueueConfig) -> NoBounce | None:
    if not env.sender:
        return NoBounce.NULL_SENDER
    if not settings.bounce or "NEVER" in env.dsn_param("notify").upper():
        return NoBounce.DISABLED
    return None


def outcome(
    state: state_file.State,
    env: Envelope,
    results: Sequence[RcptResult],
    now: float,
    settings: QueueConfig,
    spread: float = 0.0,
    pushed_back: bool = False,
) -> Outcome:
    """Record `results` (one per pending recipient) in a copy of `state`, and decide what becomes
    of the message. spread in [-1, 1] picks the jitter of the next attempt's delay. pushed_back:
    the relay asked us to slow down (adaptive pacing took it), which is no failure of the
    recipients: no attempt counted, no backoff, the message goes again at the next free slot."""
    new = state.copy()
    # the relay reports refused recipients before accepted ones: match by address
    by_address = {r.address: r for r in results}
    entries = []
    for i in state.pending(len(env.recipients)):
        res = by_address[env.recipients[i]]
        verdict = _VERDICT[res.outcome]
        new.rcpt[i] = (_RCPT_CODE[verdict], "" if verdict is Verdict.SENT else res.reply)
        entries.append(Entry(i, res.address, verdict, res.reply))
    failed = [e for e in entries if e.verdict is Verdict.FAILED]
    refusal = no_bounce(env, settings) if failed else None
    if failed and refusal is None:
        # recorded with the failure, so a full queue or a crash cannot lose the bounce
        new.bounce_due += [e.index for e in failed]
    count = len(env.recipients)
    if new.pending(count):
        disposition, due = Disposition.DEFERRED, _defer(new, env, entries, now, settings, spread, pushed_back)
    elif any(new.rcpt_state(i) == state_file.FAILED for i in range(count)):
        new.state, new.failed_at = "failed", now
        new.last_error = failed[-1].reply if failed else new.last_error
        disposition, due = Disposition.FAILED, now + settings.failed_keep
    else:
        disposition, due = Disposition.REMOVE, now
    return Outcome(new, tuple(entries), disposition, due, refusal)


def _defer(
    new: state_file.State,
    env: Envelope,
    entries: list[Entry],
    now: float,
    settings: QueueConfig,
    spread: float,
    pushed_back: bool = False,
) -> float:
    """Count the attempt, note its last temporary error, and return the next attempt's time."""
    new.state = "deferred"
    temp = [e.reply for e in entries if e.verdict is Verdict.DEFERRED]
    new.last_error = temp[-1] if temp else new.last_error
    if pushed_back:
        new.next_attempt = now
        return now
    new.attempts += 1
    delay = backoff.next_delay(new.attempts, settings.retry_initial, settings.retry_max, spread=spread)
    # never wait past the expiry time: the message bounces then
    new.next_attempt = min(now + delay, env.created + settings.max_age)
    return new.next_attempt
