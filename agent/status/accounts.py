"""Each relay account's figures as `status` shows them: who it logs in as, its pace, its relay trouble."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import Account


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


def shown(accounts: tuple[Account, ...], saved: dict[str, Any]) -> list[dict[str, Any]]:
    """`status`'s "accounts": every configured account, with the daemon's figures where it has them."""
    by_name = {a["name"]: a for a in from_saved(saved)}
    out = []
    for acc in accounts:
        base = AccountStatus(acc.name, acc.relay.username, acc.rate, acc.rate).as_json()
        known = by_name.get(acc.name, {})
        if known.get("rate") == acc.rate:  # the daemon runs with this config's rate
            base["effective_rate"] = known.get("effective_rate", acc.rate)
        base["last_relay_error"] = known.get("last_relay_error")
        out.append(base)
    return out


def lines(accounts: list[dict[str, Any]]) -> list[str]:
    """`status`'s text: one line per account (and its last relay error)."""
    out = []
    for a in accounts:
        out.append(f"account {a['name']} ({a['username'] or 'no username'}): {a['effective_rate']:.4g} msg/s")
        if a["last_relay_error"]:
            out.append(f"  last relay error: {a['last_relay_error']}")
    return out
