"""Which replies are push-back, and how the effective rate halves and recovers (no clock, no relay)."""

from __future__ import annotations

import pytest

from agent.delivery.pushback import AdaptiveRate, change_line, is_pushback


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.7.0 Too many messages, slow down",
        "451 4.7.1 Please try again later",  # 4.7.x alone
        "450 Requested action not taken: rate limit exceeded",
        "452 4.5.3 Too many recipients this hour",
        "421 throttled: try later",
        "451 4.3.0 Sending rate exceeded for user",
        "421-4.7.28 multi-line push-back",
    ],
)
def test_push_back(reply: str) -> None:
    assert is_pushback(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.3.2 Service shutting down",
        "451 4.3.0 Temporary local problem",
        "450 4.2.1 Mailbox busy",
        "550 5.7.1 Rate limit: you are blocked",  # permanent: a refusal, not push-back
        "451 4.3.0 <rate@example.com>: try again",  # the word only inside an address
        "421 4.4.2 Connection dropped",
        "452 4.3.1 Insufficient system storage",
        "451 4.3.0 accelerated",  # "rate" inside a word
        "",
    ],
)
def test_not_push_back(reply: str) -> None:
    assert not is_pushback(reply)


def test_halves_once_per_interval_never_below_min_rate() -> None:
    r = AdaptiveRate(configured=10.0, min_rate=1.5, recover_after=60.0)
    assert r.pushed_back(100.0) == 5.0
    assert r.pushed_back(100.1) is None and r.effective == 5.0  # the same burst on another connection
    assert r.pushed_back(100.3) == 2.5  # 1/5 s later: a second halving
    assert r.pushed_back(100.8) == 1.5  # min_rate
    assert r.pushed_back(102.0) is None and r.effective == 1.5


def test_recovers_by_a_quarter_of_the_configured_rate_after_quiet_periods() -> None:
    r = AdaptiveRate(configured=10.0, min_rate=0.5, recover_after=60.0)
    r.pushed_back(0.0)
    r.pushed_back(1.0)
    assert r.effective == 2.5
    assert r.recover(60.0) is None  # 59 s after the last push-back
    assert r.recover(61.0) == 5.0
    assert r.recover(100.0) is None  # the next step waits another recover_after
    assert r.recover(121.0) == 7.5
    r.pushed_back(130.0)  # push-back again: halved, and the quiet period starts over
    assert r.effective == 3.75
    assert r.recover(189.0) is None and r.recover(190.0) == 6.25
    assert r.recover(250.0) == 8.75 and r.recover(310.0) == 10.0 and r.recover(999.0) is None


def test_reconfigure_keeps_the_effective_rate_within_the_new_bounds() -> None:
    r = AdaptiveRate(configured=10.0, min_rate=0.5, recover_after=60.0)
    r.pushed_back(0.0)
    r.reconfigure(4.0, 0.5, 30.0)
    assert r.effective == 4.0
    r.reconfigure(20.0, 6.0, 30.0)
    assert r.effective == 6.0


def test_the_log_line() -> None:
    assert change_line("default", 10.0, 5.0, "relay pushed back: 421 4.7.0 slow down") == (
        "rate for account default: 10 -> 5 msg/s (relay pushed back: 421 4.7.0 slow down)"
    )
    assert change_line("shop", 5.0, 7.5, "recovering") == "rate for account shop: 5 -> 7.5 msg/s (recovering)"
