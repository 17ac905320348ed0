"""/healthz and /readyz: is the daemon's event loop running, and is mail getting out.

The verdicts are pure functions of the figures the daemon keeps here; the HTTP thread only reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STALL = 10.0  # seconds without a heartbeat from the event loop: it is stuck


@dataclass
class Health:
    retry_max: float
    heartbeat: float = field(default_factory=time.monotonic)
    listening: bool = False
    last_accept: dict[str, float] = field(default_factory=dict)  # account -> time of the relay's last 250
    waiting: dict[str, float] = field(default_factory=dict)  # account -> age of its oldest due message

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def accepted(self, account: str) -> None:
        self.last_accept[account] = time.time()

    def alive(self) -> str | None:
        return stalled(time.monotonic(), self.heartbeat)

    def ready(self) -> str | None:
        return unready(
            time.time(), self.listening, dict(self.waiting), dict(self.last_accept), self.retry_max
        )


def stalled(now: float, heartbeat: float) -> str | None:
    """None while the loop beats; else why not (for /healthz)."""
    quiet = now - heartbeat
    return f"event loop silent for {quiet:.0f}s" if quiet > STALL else None


def unready(
    now: float, listening: bool, waiting: dict[str, float], last_accept: dict[str, float], retry_max: float
) -> str | None:
    """None when ready; else the one-line reason (for /readyz's 503).

    Ready: the listeners are up, and every account with mail due either had a transaction accepted
    within retry_max seconds or has no mail that waited longer than that.
    """
    if not listening:
        return "listeners not up yet"
    for account, age in sorted(waiting.items()):
        since = now - last_accept[account] if account in last_accept else None
        if age > retry_max and (since is None or since > retry_max):
            last = "never since start" if since is None else f"{since:.0f}s ago"
            return (
                f"account {account}: mail waiting {age:.0f}s, relay last accepted {last} "
                f"(limit queue.retry_max {retry_max:g}s)"
            )
    return None
