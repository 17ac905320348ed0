"""TOML config -> frozen dataclasses, validated once.

Every error names the offending key in one line and maps to exit 78.
The sendmail fast path does not import this module when a fresh digest
exists (see agent/submit/config_cache.py); it only falls back here when it must parse TOML.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from agent.config.accounts import MODES, Account, RelayConfig, check_relay, parse_accounts
from agent.config.quotas import Quota, parse_quotas
from agent.config.sections import (
    Config,
    DkimKey,
    DnsConfig,
    LimitsConfig,
    ListenConfig,
    MetricsConfig,
    PolicyConfig,
    QueueConfig,
    SenderConfig,
)
from agent.config.values import section
from agent.config_path import DEFAULT_PATH, ENV_VAR, find_path
from agent.errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "Account",
    "Config",
    "DkimKey",
    "QueueConfig",
    "Quota",
    "RelayConfig",
    "find_path",
    "from_dict",
    "load",
    "redacted",
]


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
    check_relay("relay", r)
    if r.mode not in MODES:
        raise ConfigError(f'relay.mode: must be "relay" or "capture", got {r.mode!r}')
    if r.mode == "capture" and not os.path.isabs(r.capture_dir):
        raise ConfigError('relay.capture_dir: an absolute path is required with mode = "capture"')
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
    _validate_part2(cfg)
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


def _validate_part2(cfg: Config) -> None:
    lim = cfg.limits
    if not 0 < lim.min_rate <= lim.rate:
        raise ConfigError("limits.min_rate: must be > 0 and <= limits.rate")
    if lim.recover_after <= 0:
        raise ConfigError("limits.recover_after: must be > 0")
    if lim.over_quota not in ("hold", "refuse"):
        raise ConfigError(f'limits.over_quota: must be "hold" or "refuse", got {lim.over_quota!r}')
    if cfg.dns.watch_interval < 0:
        raise ConfigError("dns.watch_interval: must be >= 0 (0: off)")


def from_dict(data: dict[str, Any], path: str = "") -> Config:
    known = {"relay", "queue", "listen", "limits", "sender", "aliases", "dkim", "metrics", "policy", "dns"}
    known |= {"account", "quotas"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown section")
    cfg = Config(
        path=path,
        relay=section(data, "relay", RelayConfig),
        queue=section(data, "queue", QueueConfig),
        listen=section(data, "listen", ListenConfig),
        limits=section(data, "limits", LimitsConfig),
        sender=section(data, "sender", SenderConfig),
        aliases=_aliases(data),
        dkim=_dkim_keys(data),
        metrics=section(data, "metrics", MetricsConfig),
        policy=section(data, "policy", PolicyConfig),
        dns=section(data, "dns", DnsConfig),
        quotas=parse_quotas(data.get("quotas", {})),
        hostname=_fqdn(),
    )
    _validate(cfg)
    extra = parse_accounts(data.get("account", []), cfg.default_account)
    return dataclasses.replace(cfg, extra_accounts=extra)


def _fqdn() -> str:
    import socket

    name = socket.getfqdn()
    return name if name and name != "localhost" else os.uname().nodename


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data; no secret is ever part of it.

    The relay password never lives in the config; password_file is a path, shown as is;
    a password in the limits.shared Redis URL is replaced.
    """
    out = dataclasses.asdict(cfg)
    out["dkim"] = [dataclasses.asdict(k) for k in cfg.dkim]
    if "@" in cfg.limits.shared:  # redis://:password@host: keep the host, never the password
        scheme, _, rest = cfg.limits.shared.partition("://")
        out["limits"]["shared"] = f"{scheme}://<redacted>@{rest.rpartition('@')[2]}"
    return out
