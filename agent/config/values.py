"""A TOML table read into a dataclass: each value checked against the type of its field's default."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from agent.errors import ConfigError


def section(data: dict[str, Any], name: str, cls: type[Any]) -> Any:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    return cls(**table(raw, name, cls))


def table(raw: dict[str, Any], where: str, cls: type[Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of `raw` that are fields of `cls` (but not `skip`), coerced; ConfigError for others."""
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key")
        values[key] = coerce(f"{where}.{key}", value, known[key].default)
    return values


def coerce(key: str, value: Any, default: Any) -> Any:
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
