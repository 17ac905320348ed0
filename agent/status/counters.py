"""The daemon's counters and relay status: what status.json, `status` and /metrics report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Counters:
    queued: int = 0
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    last_relay_error: str | None = None
    # Why delivery is held back while the relay cannot be reached (None when it can): the daemon
    # writes it to status.json, where `mailq`, `queue list` and `status` read it for the messages
    # that wait without an attempt of their own, instead of a state file rewritten for each.
    relay_suspended: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self, outcome: Literal["queued", "sent", "deferred", "bounced"], n: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + n)
        self.changed.set()

    def relay_error(self, text: str) -> None:
        self.last_relay_error = text
        self.changed.set()

    def suspend(self, where: str) -> None:
        self.relay_suspended = "delivery temporarily suspended: " + where
        self.changed.set()

    def resume(self) -> None:
        if self.relay_suspended is not None:
            self.relay_suspended = None
            self.changed.set()
