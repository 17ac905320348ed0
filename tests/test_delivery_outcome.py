"""The scheduler's decisions as pure functions: the triage before a send and the outcome after one.

No Scheduler, no sockets, no clock: states, envelopes, replies and `now` are values here.
"""

from __future__ import annotations

import pytest
from aiosmtplib.response import SMTPResponse
from hypothesis import given
from hypothesis import strategies as st

from agent.config import QueueConfig
from agent.delivery import backoff
from agent.delivery.decisions import (
    Disposition,
    NoBounce,
    Outcome,
    Triage,
    Verdict,
    expiry_reply,
    for_pending,
    index_due,
    outcome,
    triage,
)
from agent.queue.queue_file import Envelope
from agent.queue.state_file import FAILED, PENDING, SENT, State
from agent.relay.failures import RelayError
from agent.relay.results import Outcome as RelayOutcome
from agent.relay.results import RcptResult, refuse_all

Q = QueueConfig(failed_keep=604800, retry_initial=60.0, retry_max=3600.0, max_age=432000.0, bounce=True)
CREATED = 1_700_000_000.0
NOW = CREATED + 100.0
B, C = "b@example.net", "c@example.net"
ENV = Envelope("a@example.com", (B, C), CREATED)
OK = "250 2.0.0 Ok: queued as 1234"
NO_USER = "550 5.1.1 <c@example.net>: no such user"
LATER = "451 4.3.0 try again later"


def sent(address: str) -> RcptResult:
    return RcptResult(address, "sent", OK)


def envelope(sender: str = "a@example.com", dsn: tuple[tuple[str, str], ...] = ()) -> Envelope:
    return Envelope(sender, (B, C), CREATED, dsn)


# -- triage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        (State(), NOW, Triage.SEND),
        (State("deferred", attempts=2, last_error=LATER), NOW, Triage.SEND),
        (State(rcpt={0: (SENT, "")}), NOW, Triage.SEND),
        (State("hold"), NOW, Triage.HELD),
        (State("hold"), CREATED + Q.max_age, Triage.HELD),  # a held message never expires by itself
        (State("hold", bounce_due=[1]), NOW, Triage.BOUNCE_OWED),  # the owed bounce goes first
        (State("failed", failed_at=NOW - 10, bounce_due=[1]), NOW, Triage.BOUNCE_OWED),
        (State("failed", failed_at=NOW - 10), NOW, Triage.FAILED_KEPT),
        (State("failed", failed_at=NOW - Q.failed_keep + 1), NOW, Triage.FAILED_KEPT),
        (State("failed", failed_at=NOW - Q.failed_keep), NOW, Triage.FAILED_GONE),
        (State("deferred", rcpt={0: (SENT, ""), 1: (FAILED, NO_USER)}), NOW, Triage.NOTHING_PENDING),
        (State(), CREATED + Q.max_age - 1, Triage.SEND),
        (State(), CREATED + Q.max_age, Triage.EXPIRED),
        (State("deferred", rcpt={0: (SENT, "")}), CREATED + Q.max_age, Triage.EXPIRED),
    ],
)
def test_triage(state: State, now: float, expected: Triage) -> None:
    before = state.copy()
    assert triage(state, ENV, now, Q) is expected
    assert state == before


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (State(), 0.0),
        (State("deferred", next_attempt=NOW + 60), NOW + 60),
        (State("failed", failed_at=NOW), NOW + Q.failed_keep),
        (State("failed", failed_at=NOW, bounce_due=[1]), 0.0),  # the bounce the queue could not take
        (State("deferred", next_attempt=NOW + 60, bounce_due=[1]), 0.0),
        (State("hold"), None),
        (State("hold", bounce_due=[1]), None),
    ],
)
def test_index_due(state: State, expected: float | None) -> None:
    assert index_due(state, Q) == expected


# -- outcome: table -----------------------------------------------------------------------------


def test_all_sent_removes_the_message() -> None:
    out = outcome(State(), ENV, [sent(B), sent(C)], NOW, Q)
    assert out.disposition is Disposition.REMOVE
    assert out.recipients(Verdict.SENT) == (0, 1)
    assert out.state.rcpt == {0: (SENT, ""), 1: (SENT, "")}
    assert out.no_bounce is None and out.state.bounce_due == []


def test_one_sent_one_refused_fails_with_a_bounce_due() -> None:
    # the relay reports the refused recipient first: results are matched by address
    out = outcome(State(), ENV, [RcptResult(C, "perm", NO_USER), sent(B)], NOW, Q)
    assert out.disposition is Disposition.FAILED
    assert (out.recipients(Verdict.SENT), out.recipients(Verdict.FAILED)) == ((0,), (1,))
    assert out.state.state == "failed" and out.state.failed_at == NOW
    assert out.state.rcpt == {0: (SENT, ""), 1: (FAILED, NO_USER)}
    assert out.state.bounce_due == [1] and out.no_bounce is None
    assert out.state.last_error == NO_USER
    assert out.due == NOW + Q.failed_keep
    assert [(e.address, e.verdict, e.reply) for e in out.entries] == [
        (B, Verdict.SENT, OK),
        (C, Verdict.FAILED, NO_USER),
    ]


@pytest.mark.parametrize(("attempts", "delay"), [(0, 60.0), (1, 120.0), (3, 480.0), (12, 3600.0)])
def test_a_4xx_defers_with_backoff_and_the_recipients_own_error(attempts: int, delay: float) -> None:
    state = State("deferred", attempts=attempts, last_error="421 4.7.0 older reason")
    out = outcome(state, ENV, [sent(B), RcptResult(C, "temp", LATER)], NOW, Q)
    assert out.disposition is Disposition.DEFERRED
    assert out.recipients(Verdict.DEFERRED) == (1,)
    assert out.state.rcpt == {0: (SENT, ""), 1: (PENDING, LATER)}  # the reason mailq shows for C
    assert out.state.attempts == attempts + 1 and out.state.state == "deferred"
    assert out.state.last_error == LATER
    assert out.state.next_attempt == out.due == NOW + delay
    assert out.state.bounce_due == [] and out.no_bounce is None


def test_the_jitter_is_passed_in() -> None:
    low = outcome(State(), ENV, [RcptResult(B, "temp", LATER), sent(C)], NOW, Q, spread=-1.0)
    high = outcome(State(), ENV, [RcptResult(B, "temp", LATER), sent(C)], NOW, Q, spread=1.0)
    assert low.due == pytest.approx(NOW + 54) and high.due == pytest.approx(NOW + 66)


def test_a_5xx_to_mail_fails_every_recipient() -> None:
    reply = "553 5.7.1 sender rejected"
    out = outcome(State(), ENV, refuse_all(SMTPResponse(553, "5.7.1 sender rejected"), [B, C]), NOW, Q)
    assert out.disposition is Disposition.FAILED
    assert out.recipients(Verdict.FAILED) == (0, 1)
    assert out.state.rcpt == {0: (FAILED, reply), 1: (FAILED, reply)}
    assert out.state.bounce_due == [0, 1]


def test_a_connection_error_defers_every_pending_recipient() -> None:
    exc = RelayError("connect", "Connection refused", "relay.example.net[192.0.2.1]:587")
    state = State("deferred", attempts=1, rcpt={0: (SENT, "")})
    out = outcome(state, ENV, for_pending(state, ENV, "temp", str(exc)), NOW, Q)
    assert [e.index for e in out.entries] == [1]  # only the one still pending
    assert out.disposition is Disposition.DEFERRED
    assert out.state.rcpt == {0: (SENT, ""), 1: (PENDING, str(exc))}
    assert out.state.last_error == str(exc) and out.state.attempts == 2
    assert not out.recipients(Verdict.SENT)


def test_expiry_at_max_age_fails_what_is_pending_with_a_bounce() -> None:
    now = CREATED + Q.max_age
    state = State("deferred", attempts=9, last_error=LATER, rcpt={0: (SENT, ""), 1: (PENDING, LATER)})
    assert triage(state, ENV, now, Q) is Triage.EXPIRED
    reply = expiry_reply(state, ENV, now)
    assert reply == f"554 5.4.7 message expired after 432000s in the queue ({LATER})"
    assert expiry_reply(State(), ENV, now).endswith("(no reply)")
    out = outcome(state, ENV, for_pending(state, ENV, "perm", reply), now, Q)
    assert out.disposition is Disposition.FAILED
    assert out.state.rcpt[1] == (FAILED, reply) and out.state.bounce_due == [1]
    assert out.state.last_error == reply


@pytest.mark.parametrize(
    ("env", "settings", "why"),
    [
        (envelope(sender=""), Q, NoBounce.NULL_SENDER),
        (envelope(dsn=(("notify", "NEVER"),)), Q, NoBounce.DISABLED),
        (envelope(dsn=(("notify", "never"),)), Q, NoBounce.DISABLED),
        (envelope(), QueueConfig(bounce=False), NoBounce.DISABLED),
        (envelope(dsn=(("notify", "FAILURE,DELAY"),)), Q, None),
    ],
)
def test_who_gets_no_bounce(env: Envelope, settings: QueueConfig, why: NoBounce | None) -> None:
    out = outcome(State(), env, [sent(B), RcptResult(C, "perm", NO_USER)], NOW, settings)
    assert out.disposition is Disposition.FAILED and out.state.rcpt[1] == (FAILED, NO_USER)
    assert out.no_bounce is why
    assert out.state.bounce_due == ([] if why else [1])
    assert outcome(State(), env, [sent(B), sent(C)], NOW, settings).no_bounce is None  # nothing failed


def test_the_next_attempt_is_never_after_the_expiry() -> None:
    now = CREATED + Q.max_age - 10
    out = outcome(State(attempts=20), ENV, [RcptResult(B, "temp", LATER), sent(C)], now, Q)
    assert out.due == out.state.next_attempt == CREATED + Q.max_age


def test_the_rest_sent_after_an_earlier_failure_keeps_the_message_failed() -> None:
    state = State("deferred", attempts=1, last_error=LATER, rcpt={1: (FAILED, NO_USER)})
    out = outcome(state, ENV, [sent(B)], NOW, Q)
    assert out.disposition is Disposition.FAILED
    assert out.state.bounce_due == []  # that failure's bounce went out then
    assert out.state.last_error == LATER and out.due == NOW + Q.failed_keep


def test_outcome_leaves_its_input_alone() -> None:
    state = State("deferred", attempts=1, rcpt={0: (PENDING, LATER)})
    before = state.copy()
    out = outcome(state, ENV, [RcptResult(B, "perm", NO_USER), RcptResult(C, "temp", LATER)], NOW, Q)
    assert state == before and out.state != before


def test_failed_is_kept_until_failed_keep_then_removed() -> None:
    out = outcome(State(), ENV, [RcptResult(B, "perm", NO_USER), RcptResult(C, "perm", NO_USER)], NOW, Q)
    kept = out.state
    kept.bounce_due = []  # the scheduler queued the bounce
    assert triage(kept, ENV, out.due - 1, Q) is Triage.FAILED_KEPT
    assert index_due(kept, Q) == out.due
    assert triage(kept, ENV, out.due, Q) is Triage.FAILED_GONE


# -- outcome: properties ------------------------------------------------------------------------

CODES = st.sampled_from([PENDING, SENT, FAILED])
KINDS: st.SearchStrategy[RelayOutcome] = st.sampled_from(["sent", "temp", "perm"])
REPLIES: dict[RelayOutcome, str] = {"sent": OK, "temp": LATER, "perm": NO_USER}


@st.composite
def cases(draw: st.DrawFn) -> tuple[State, Envelope, list[RcptResult], float]:
    n = draw(st.integers(1, 6))
    codes = draw(st.lists(CODES, min_size=n, max_size=n).filter(lambda c: PENDING in c))
    recipients = tuple(f"r{i}@example.net" for i in range(n))
    env = Envelope(draw(st.sampled_from(["", "a@example.com"])), recipients, CREATED)
    state = State(
        draw(st.sampled_from(["queued", "deferred"])),
        attempts=draw(st.integers(0, 30)),
        rcpt={i: (c, "" if c == SENT else NO_USER) for i, c in enumerate(codes) if c != PENDING},
    )
    pending = state.pending(n)
    kinds = draw(st.lists(KINDS, min_size=len(pending), max_size=len(pending)))
    results = [RcptResult(recipients[i], k, REPLIES[k]) for i, k in zip(pending, kinds, strict=True)]
    now = CREATED + draw(st.floats(0, Q.max_age - 1))
    return state, env, draw(st.permutations(results)), now


@given(cases(), st.floats(-1.0, 1.0))
def test_every_pending_recipient_ends_in_exactly_one_verdict(
    case: tuple[State, Envelope, list[RcptResult], float], spread: float
) -> None:
    state, env, results, now = case
    before = state.copy()
    out: Outcome = outcome(state, env, results, now, Q, spread)
    pending = state.pending(len(env.recipients))
    groups = [out.recipients(v) for v in Verdict]
    assert sorted(i for g in groups for i in g) == pending
    assert state == before
    for i in range(len(env.recipients)):
        if i not in pending:
            assert out.state.rcpt[i] == state.rcpt[i]
    failed = out.recipients(Verdict.FAILED)
    assert out.state.bounce_due == ([] if not env.sender else list(failed))
    assert (out.no_bounce is NoBounce.NULL_SENDER) == bool(failed and not env.sender)
    if out.recipients(Verdict.DEFERRED):
        assert out.disposition is Disposition.DEFERRED
        assert out.state.attempts == state.attempts + 1
        assert now + 1.0 <= out.due <= min(now + Q.retry_max, CREATED + Q.max_age)
    elif any(out.state.rcpt_state(i) == FAILED for i in range(len(env.recipients))):
        assert out.disposition is Disposition.FAILED and out.due == now + Q.failed_keep
    else:
        assert out.disposition is Disposition.REMOVE


def test_backoff_spread_is_the_jitter() -> None:
    assert backoff.next_delay(1, 60, 3600, spread=1.0) == pytest.approx(66.0)
    assert backoff.next_delay(1, 60, 3600, spread=-1.0) == pytest.approx(54.0)
    assert backoff.next_delay(1, 60, 3600, jitter=0, spread=1.0) == 60.0
