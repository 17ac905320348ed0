"""Retry and expiry policy: pure functions of numbers, no clock."""

from __future__ import annotations

import random


def next_delay(
    attempts: int, initial: float, cap: float, jitter: float = 0.1, spread: float | None = None
) -> float:
    """Delay before attempt number `attempts + 1` after `attempts` failures (>= 1).

    Doubles from `initial` up to `cap`; a little jitter keeps a fleet that lost its
    relay at the same moment from coming back in lock-step. spread in [-1, 1] picks
    the jitter (drawn at random when None), so a caller can stay a pure function.
    """
    base = min(cap, initial * float(2 ** max(0, min(attempts - 1, 40))))
    if jitter:
        base *= 1 + jitter * (random.uniform(-1.0, 1.0) if spread is None else spread)
    return max(1.0, min(base, cap))


def expired(created: float, now: float, max_age: float) -> bool:
    return now - created >= max_age


def failed_gone(failed_at: float, now: float, keep: float) -> bool:
    """A failed message stays listed for `failed_keep` seconds, then is removed."""
    return failed_at > 0 and now - failed_at >= keep
