"""What the queue holds, as the metrics and /readyz see it: plain data (queue/stats.py fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field

STATES = ("queued", "deferred", "held", "failed")


@dataclass(frozen=True)
class QueueFigures:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    oldest: float = 0.0  # age in seconds of the oldest message that is not failed; 0 when none waits
    waiting: dict[str, float] = field(default_factory=dict)  # account -> age of its oldest unsent message
