"""The daemon's counters and relay status: what status.json, `status` and /metrics report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from agent.status.accounts import AccountStatus

if TYPE_CHECKING:  # prometheus-client is imported only when [metrics] listen is set
    from agent.status.health import Health
    from agent.status.metrics import Metrics

DEFAULT = "default"
Outcome = Literal["queued", "sent", "deferred", "bounced", "held"]


@dataclass
class Counters:
    queued: int = 0
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    held: int = 0
    moves: int = 0  # grows with every bump: the metrics refresh the queue's figures after a change
    last_relay_error: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    accounts: dict[str, AccountStatus] = field(default_factory=dict)  # by name, the default first
    sink: Metrics | None = None  # /metrics, when it is served
    health: Health | None = None

    def bump(self, outcome: Outcome, n: int = 1, account: str = DEFAULT) -> None:
        setattr(self, outcome, getattr(self, outcome) + n)
        self.moves += 1
        self.changed.set()
        if self.sink is not None:
            self.sink.messages.labels(account, outcome).inc(n)

    def reply(self, code: str, account: str = DEFAULT) -> None:
        """A relay reply to a transaction ("250", "421", "550"...)."""
        if self.sink is not None:
            self.sink.replies.labels(account, code[:3]).inc()

    def pushback(self, account: str = DEFAULT, n: int = 1) -> None:
        """The relay pushed back `n` times (replies asking this account to send more slowly)."""
        if self.sink is not None and n:
            self.sink.pushback.labels(account).inc(n)

    def rate(self, account: str, value: float) -> None:
        """The account's effective rate changed (its AccountStatus already shows it)."""
        self.changed.set()
        if self.sink is not None:
            self.sink.rate.labels(account).set(value)

    def delivered(self, delay: float, account: str = DEFAULT) -> None:
        """The relay took a message `delay` seconds after it arrived."""
        if self.sink is not None:
            self.sink.delay.labels(account).observe(max(0.0, delay))
        if self.health is not None:
            self.health.accepted(account)

    def relay_error(self, text: str) -> None:
        self.last_relay_error = text
        self.changed.set()

    # Why an account's delivery is held back while its relay cannot be reached (None when it can):
    # the daemon writes it to status.json, where `mailq`, `queue list` and `status` read it for the
    # messages that wait without an attempt of their own, instead of a state file rewritten for each.
    def suspend(self, account: str, where: str) -> None:
        self._suspended(account, "delivery temporarily suspended: " + where)

    def resume(self, account: str) -> None:
        self._suspended(account, None)

    def _suspended(self, account: str, reason: str | None) -> None:
        status = self.accounts.get(account)
        if status is not None and status.suspended != reason:
            status.suspended = reason
            self.changed.set()

    @property
    def relay_suspended(self) -> str | None:
        """The default account's suspension: status.json's "relay_suspended", as with [relay] alone."""
        status = self.accounts.get(DEFAULT)
        return status.suspended if status is not None else None
