"""Each relay account's figures as `status` shows them: who it logs in as, its pace, its relay trouble."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AccountStatus:
    name: str
    username: str
    rate: float
    effective_rate: float  # the pace now: the configured rate until something slows it down
    last_relay_error: str | None = None
    # why this account's delivery is held back now (its relay cannot be reached), None when it is not
    suspended: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "username": self.username,
            "rate": self.rate,
            "effective_rate": self.effective_rate,
            "last_relay_error": self.last_relay_error,
        }


def from_saved(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The "accounts" of what status.json holds (agent.status.snapshot.read), checked entry by entry."""
    raw = saved.get("accounts")
    if not isinstance(raw, list):
        return []
    return [a for a in raw if isinstance(a, dict) and isinstance(a.get("name"), str)]
