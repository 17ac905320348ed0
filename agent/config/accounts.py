"""Relay accounts: [relay] is the default one, each [[account]] table another; and which account
sends a sender domain's mail (pure: no I/O)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from agent.config.values import coerce, table
from agent.errors import ConfigError

DEFAULT = "default"
NAME = re.compile(r"[a-z0-9-]+\Z")
MODES = ("relay", "capture")


@dataclass(frozen=True)
class RelayConfig:
    host: str = "smtp.elastx.email"
    port: int = 587
    tls: str = "starttls"
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    timeout: float = 30.0
    data_timeout: float = 600.0
    helo_name: str = ""
    mode: str = "relay"  # or "capture": the last hop writes a Maildir, never a relay connection
    capture_dir: str = ""


@dataclass(frozen=True)
class Account:
    name: str
    relay: RelayConfig  # [relay]'s settings with the account's own over them
    rate: float
    connections: int
    domains: tuple[str, ...] = ()


ACCOUNT_ONLY = ("name", "domains", "rate", "connections")
NOT_PER_ACCOUNT = ("mode", "capture_dir")  # one last hop for the whole host


def parse_accounts(raw: Any, default: Account) -> tuple[Account, ...]:
    """The [[account]] tables, each validated; a domain listed twice names both accounts."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError("[[account]] must be an array of tables")
    accounts = [_account(i, entry, default) for i, entry in enumerate(raw)]
    owners: dict[str, str] = {}
    for acc in accounts:
        if acc.name in owners.values():
            raise ConfigError(f'account "{acc.name}": defined twice')
        for domain in acc.domains:
            if domain in owners:
                raise ConfigError(
                    f'account domain {domain}: listed in both "{owners[domain]}" and "{acc.name}"'
                )
            owners[domain] = acc.name
    return tuple(accounts)


def _account(i: int, entry: Any, default: Account) -> Account:
    if not isinstance(entry, dict):
        raise ConfigError(f"account[{i}]: must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name) or name == DEFAULT:
        raise ConfigError(f'account[{i}].name: required, [a-z0-9-]+ and not "default", got {name!r}')
    where = f"account.{name}"
    own = {k: v for k, v in entry.items() if k not in ACCOUNT_ONLY}
    relay = dataclasses.replace(default.relay, **table(own, where, RelayConfig, skip=NOT_PER_ACCOUNT))
    if "username" not in entry or "@" not in relay.username:  # never [relay]'s: another account
        raise ConfigError(f"{where}.username: required, an email address")
    check_relay(where, relay)
    rate = coerce(f"{where}.rate", entry.get("rate", default.rate), 1.0)
    connections = coerce(f"{where}.connections", entry.get("connections", default.connections), 1)
    if rate <= 0 or connections < 1:
        raise ConfigError(f"{where}.rate / {where}.connections: must be > 0 / >= 1")
    return Account(name, relay, rate, connections, _domains(where, entry.get("domains")))


def _domains(where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(d, str) and d.strip(" .") for d in raw):
        raise ConfigError(f"{where}.domains: required, a list of sender domains")
    return tuple(d.strip().lower().rstrip(".") for d in raw)


def check_relay(where: str, r: RelayConfig) -> None:
    if r.tls not in ("starttls", "implicit"):
        raise ConfigError(f'{where}.tls: must be "starttls" or "implicit", got {r.tls!r}')
    if not 0 < r.port < 65536:
        raise ConfigError(f"{where}.port: {r.port} is not a TCP port")
    if r.timeout <= 0 or r.data_timeout <= 0:
        raise ConfigError(f"{where}.timeout / {where}.data_timeout: must be > 0")


def owner(accounts: tuple[Account, ...], domain: str) -> str | None:
    """The account listing `domain` or, else, its nearest listed parent domain."""
    d = domain.strip().lower().rstrip(".")
    while d:
        for acc in accounts:
            if d in acc.domains:
                return acc.name
        d = d.partition(".")[2]
    return None


def account_for(accounts: tuple[Account, ...], from_domain: str, sender_domain: str) -> str:
    """From:'s domain decides; else the envelope sender's; else the default account."""
    return owner(accounts, from_domain) or owner(accounts, sender_domain) or DEFAULT
