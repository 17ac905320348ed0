"""Where the config file is: stdlib-only, shared by the CLI and the sendmail fast path."""

import posix  # not os: `import os` is dear on the sendmail fast path (see submit/sendmail.py)

from agent.errors import ConfigError

DEFAULT_PATH = "/etc/relay-agent/config.toml"
ENV_VAR = "RELAY_AGENT_CONFIG"


def is_file(path: str) -> bool:
    """os.path.isfile without importing os."""
    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o100000
    except (OSError, ValueError):
        return False


def find_path(cli_path: str | None = None) -> str:
    """--config / -C, then $RELAY_AGENT_CONFIG, then the default.

    A path named explicitly that does not exist is an error, never a fallback.
    """
    from_env = posix.environ.get(ENV_VAR.encode())
    for origin, candidate in (("--config", cli_path), (ENV_VAR, from_env.decode() if from_env else None)):
        if candidate:
            if not is_file(candidate):
                raise ConfigError(f"config file {candidate} (from {origin}) does not exist")
            return candidate
    return DEFAULT_PATH
