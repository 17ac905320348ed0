"""The config's sections as frozen dataclasses: every key, its type and its default."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config.accounts import DEFAULT, Account, RelayConfig, account_for
from agent.config.quotas import Quota


@dataclass(frozen=True)
class QueueConfig:
    path: str = "/var/spool/relay-agent"
    maildrop: str = "/var/spool/relay-agent-maildrop"
    min_free: int = 104857600
    failed_keep: int = 604800
    retry_initial: float = 60.0
    retry_max: float = 3600.0
    max_age: float = 432000.0
    bounce: bool = True


@dataclass(frozen=True)
class ListenConfig:
    socket: str = "/run/relay-agent/submit.sock"
    socket_mode: str = "0666"
    socket_group: str = ""
    smtp: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    rate: float = 10.0
    max_message_size: int = 26214400
    shared: str = ""
    fleet_size_hint: int = 1
    connections: int = 2
    adaptive: bool = True  # slow down when the relay pushes back
    min_rate: float = 0.5
    recover_after: float = 60.0
    over_quota: str = "hold"  # or "refuse"


@dataclass(frozen=True)
class SenderConfig:
    default_from: str = ""
    rewrite_local: bool = True


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_file: str


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""


@dataclass(frozen=True)
class PolicyConfig:
    unsigned: str = "reject"


@dataclass(frozen=True)
class DnsConfig:
    nameserver: str = ""
    watch_interval: float = 0.0  # seconds between the daemon's sender-domain checks; 0: off


@dataclass(frozen=True)
class Config:
    path: str = ""
    relay: RelayConfig = field(default_factory=RelayConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    aliases: dict[str, str] = field(default_factory=dict)
    dkim: tuple[DkimKey, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    extra_accounts: tuple[Account, ...] = ()  # the [[account]] tables; [relay] is the default one
    quotas: dict[str, Quota] = field(default_factory=dict)
    hostname: str = ""

    @property
    def helo_name(self) -> str:
        return self.relay.helo_name or self.hostname

    @property
    def default_account(self) -> Account:
        return Account(DEFAULT, self.relay, self.limits.rate, self.limits.connections)

    @property
    def accounts(self) -> tuple[Account, ...]:
        """Every account, the default first."""
        return (self.default_account, *self.extra_accounts)

    def account(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)

    def account_for(self, from_domain: str, sender_domain: str) -> str:
        """The name of the account that sends mail with this From: domain and envelope sender domain."""
        return account_for(self.extra_accounts, from_domain, sender_domain)

    @property
    def capture(self) -> bool:
        return self.relay.mode == "capture"
