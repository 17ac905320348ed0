"""TOML config -> frozen dataclasses, validated once.

Every error names the offending key in one line and maps to exit 78.
The sendmail fast path does not import this module when a fresh digest
exists (see agent/submit/config_cache.py); it only falls back here when it must parse TOML.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from agent.config_path import DEFAULT_PATH, ENV_VAR, find_path
from agent.errors import ConfigError

__all__ = ["DEFAULT_PATH", "ENV_VAR", "Config", "find_path", "load"]


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
    hostname: str = ""

    @property
    def helo_name(self) -> str:
        return self.relay.helo_name or self.hostname


def load(cli_path: str | None = None) -> Config:
    path = find_path(cli_path)
    if not os.path.exists(path):
        # No config at the default place: built-in defaults (enough for `dns check X`,
        # `dkim keygen`, `demo`); delivery will then fail with a clear error.
        return from_dict({}, path="")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return from_dict(data, path=path)


def _section(data: dict[str, Any], name: str, cls: type[Any]) -> Any:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key")
        values[key] = _coerce(f"{name}.{key}", value, known[key].default)
    return cls(**values)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{key}: must not contain CR, LF or NUL")
    return value


def _dkim_keys(data: dict[str, Any]) -> tuple[DkimKey, ...]:
    raw = data.get("dkim", [])
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError("[[dkim]] must be an array of tables")
    keys = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"dkim[{i}]: must be a table")
        for name in ("domain", "selector", "key_file"):
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise ConfigError(f"dkim[{i}].{name}: required string")
        extra = set(entry) - {"domain", "selector", "key_file"}
        if extra:
            raise ConfigError(f"dkim[{i}].{sorted(extra)[0]}: unknown key")
        keys.append(DkimKey(entry["domain"].lower().rstrip("."), entry["selector"], entry["key_file"]))
    return tuple(keys)


def _aliases(data: dict[str, Any]) -> dict[str, str]:
    raw = data.get("aliases", {})
    if not isinstance(raw, dict):
        raise ConfigError("[aliases] must be a table")
    out = {}
    for name, target in raw.items():
        if not isinstance(target, str) or any(c in target for c in "\r\n\0"):
            raise ConfigError(f"aliases.{name}: expected an address string")
        out[name.lower()] = target
    return out


def _validate(cfg: Config) -> None:
    r, q, lim = cfg.relay, cfg.queue, cfg.limits
    if r.tls not in ("starttls", "implicit"):
        raise ConfigError(f'relay.tls: must be "starttls" or "implicit", got {r.tls!r}')
    if not 0 < r.port < 65536:
        raise ConfigError(f"relay.port: {r.port} is not a TCP port")
    if r.timeout <= 0 or r.data_timeout <= 0:
        raise ConfigError("relay.timeout / relay.data_timeout: must be > 0")
    if q.retry_initial < 1:
        raise ConfigError("queue.retry_initial: must be >= 1")
    if q.retry_max < q.retry_initial:
        raise ConfigError("queue.retry_max: must be >= queue.retry_initial")
    if q.max_age < 1:
        raise ConfigError("queue.max_age: must be >= 1")
    if not os.path.isabs(q.path) or not os.path.isabs(q.maildrop):
        raise ConfigError("queue.path / queue.maildrop: must be absolute paths")
    if lim.rate <= 0:
        raise ConfigError("limits.rate: must be > 0")
    if lim.max_message_size <= 0:
        raise ConfigError("limits.max_message_size: must be > 0")
    if lim.connections < 1:
        raise ConfigError("limits.connections: must be >= 1")
    if lim.fleet_size_hint < 1:
        raise ConfigError("limits.fleet_size_hint: must be >= 1")
    if lim.shared and lim.shared.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        raise ConfigError('limits.shared: must be a "redis://host:port/db" (or rediss://, unix://) URL')
    if cfg.policy.unsigned not in ("reject", "send"):
        raise ConfigError(f'policy.unsigned: must be "reject" or "send", got {cfg.policy.unsigned!r}')
    try:
        int(cfg.listen.socket_mode, 8)
    except ValueError:
        raise ConfigError(f"listen.socket_mode: {cfg.listen.socket_mode!r} is not an octal mode") from None
    if cfg.listen.smtp:
        host, _, port = cfg.listen.smtp.rpartition(":")
        host = host.strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise ConfigError(f"listen.smtp: {cfg.listen.smtp} is not a loopback address")
        if not port.isdigit():
            raise ConfigError(f"listen.smtp: {cfg.listen.smtp} has no port")
    for addr in (cfg.sender.default_from, r.username):
        if addr and "@" not in addr:
            raise ConfigError(f"{addr!r}: expected an email address (sender.default_from / relay.username)")


def from_dict(data: dict[str, Any], path: str = "") -> Config:
    known = {"relay", "queue", "listen", "limits", "sender", "aliases", "dkim", "metrics", "policy", "dns"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown section")
    cfg = Config(
        path=path,
        relay=_section(data, "relay", RelayConfig),
        queue=_section(data, "queue", QueueConfig),
        listen=_section(data, "listen", ListenConfig),
        limits=_section(data, "limits", LimitsConfig),
        sender=_section(data, "sender", SenderConfig),
        aliases=_aliases(data),
        dkim=_dkim_keys(data),
        metrics=_section(data, "metrics", MetricsConfig),
        policy=_section(data, "policy", PolicyConfig),
        dns=_section(data, "dns", DnsConfig),
        hostname=_fqdn(),
    )
    _validate(cfg)
    return cfg


def _fqdn() -> str:
    import socket

    name = socket.getfqdn()
    return name if name and name != "localhost" else os.uname().nodename


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data; no secret is ever part of it.

    The relay password never lives in the config; password_file is a path, shown as is;
    a password in the limits.shared Redis URL is replaced.
    """
    import dataclasses

    out = dataclasses.asdict(cfg)
    out["dkim"] = [dataclasses.asdict(k) for k in cfg.dkim]
    if "@" in cfg.limits.shared:  # redis://:password@host: keep the host, never the password
        scheme, _, rest = cfg.limits.shared.partition("://")
        out["limits"]["shared"] = f"{scheme}://<redacted>@{rest.rpartition('@')[2]}"
    return out
