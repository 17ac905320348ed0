"""[quotas]: messages per period for each local submitter ("*": every user without a line of its own,
"smtp": the loopback TCP listener)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError

PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Quota:
    count: int
    period: float  # seconds of the sliding window
    text: str  # as written, for log lines and held mail's reason

    def __str__(self) -> str:
        return self.text


def parse_quotas(raw: Any) -> dict[str, Quota]:
    if not isinstance(raw, dict):
        raise ConfigError("[quotas] must be a table")
    return {str(user): _quota(str(user), value) for user, value in raw.items()}


def _quota(user: str, value: Any) -> Quota:
    count, _, unit = value.partition("/") if isinstance(value, str) else ("", "", "")
    if not count.strip().isdigit() or int(count) < 1 or unit.strip() not in PERIODS or not user.strip():
        raise ConfigError(
            f'quotas.{user}: expected "N/period" (N >= 1; period s, min, h or d), got {value!r}'
        )
    return Quota(int(count), PERIODS[unit.strip()], f"{int(count)}/{unit.strip()}")
