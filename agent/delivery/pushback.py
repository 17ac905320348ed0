"""Pacing that listens: which relay replies are push-back, and the effective rate they leave (pure).

Push-back is a 421, 450, 451 or 452 reply whose enhanced status code is 4.7.x or whose text speaks of
rate, limits, too many, throttling or slowing down (whole words, outside any <address>). Other 4xx
replies ("421 4.3.2 shutting down") and dropped connections are ordinary temporary failures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

CODES = ("421", "450", "451", "452")
_ENHANCED = re.compile(r"^\d{3}[ -]4\.7\.\d{1,3}\b")
_WORDS = re.compile(r"\b(?:rates?|limit(?:s|ed|ing)?|too many|throttl\w*|slow down)\b", re.IGNORECASE)
_ADDRESS = re.compile(r"<[^<>]*>")


def is_pushback(reply: str) -> bool:
    """Whether this relay reply asks us to send more slowly."""
    text = reply.strip()
    if text[:3] not in CODES:
        return False
    return bool(_ENHANCED.match(text)) or bool(_WORDS.search(_ADDRESS.sub(" ", text[4:])))


@dataclass
class AdaptiveRate:
    """One account's effective rate: halved on push-back (not below min_rate, at most once per
    1 / effective rate, so one burst seen on parallel connections halves once), then a quarter of
    the configured rate back after each recover_after seconds without push-back."""

    configured: float
    min_rate: float
    recover_after: float
    effective: float = field(init=False)
    _halved: float = field(default=-math.inf, init=False)
    _quiet_since: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.effective = self.configured

    def pushed_back(self, now: float) -> float | None:
        """A push-back at `now`: the new effective rate if it changed, else None."""
        self._quiet_since = now
        if now - self._halved < 1.0 / self.effective:
            return None
        self._halved = now
        return self._set(max(self.min_rate, self.effective / 2))

    def recover(self, now: float) -> float | None:
        """Called now and then: the new effective rate if a recovery step is due, else None."""
        if self.effective >= self.configured or now - self._quiet_since < self.recover_after:
            return None
        self._quiet_since = now  # the next step waits another recover_after
        return self._set(min(self.configured, self.effective + self.configured / 4))

    def reconfigure(self, configured: float, min_rate: float, recover_after: float) -> None:
        self.configured, self.min_rate, self.recover_after = configured, min_rate, recover_after
        self.effective = min(max(self.effective, min_rate), configured)

    def _set(self, rate: float) -> float | None:
        if rate == self.effective:
            return None
        self.effective = rate
        return rate


def change_line(account: str, old: float, new: float, why: str) -> str:
    """The one log line per change of an account's effective rate."""
    return f"rate for account {account}: {old:g} -> {new:g} msg/s ({why})"
