"""Where the config file is: stdlib-only, shared by the CLI and the sendmail fast path."""

from __future__ import annotations

import os

from agent.errors import ConfigError

DEFAULT_PATH = "/etc/relay-agent/config.toml"
ENV_VAR = "RELAY_AGENT_CONFIG"


def find_path(cli_path: str | None = None) -> str:
    """--config / -C, then $RELAY_AGENT_CONFIG, then the default.

    A path named explicitly that does not exist is an error, never a fallback.
    """
    for origin, candidate in (("--config", cli_path), (ENV_VAR, os.environ.get(ENV_VAR))):
        if candidate:
            if not os.path.isfile(candidate):
                raise ConfigError(f"config file {candidate} (from {origin}) does not exist")
            return candidate
    return DEFAULT_PATH
