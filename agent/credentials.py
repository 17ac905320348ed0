"""The relay password: systemd credential, password_file, environment, keyring.

Never logged or printed. (Interim version; the full one with keyring status
messages replaces it.)
"""

from __future__ import annotations

import os
import stat

from agent.config import Config
from agent.errors import ConfigError

SERVICE = "relay-agent"
CREDENTIAL = "relay-password"


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().rstrip("\r\n")


def get_password(cfg: Config) -> str | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = os.path.join(creds, CREDENTIAL)
        if os.path.exists(path):
            value = _read_secret(path)
            if value.strip():
                return value
    if cfg.relay.password_file:
        path = cfg.relay.password_file
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"relay.password_file {path}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            mode = oct(stat.S_IMODE(st.st_mode))[2:]
            raise ConfigError(
                f"password_file {path} is readable by group/others (mode 0{mode}); chmod 600 {path}"
            )
        return _read_secret(path)
    env = os.environ.get("RELAY_AGENT_PASSWORD")
    if env:
        return env
    if not cfg.relay.username:
        return None
    try:
        import keyring
        from keyring.backends import fail

        if isinstance(keyring.get_keyring(), fail.Keyring):
            return None
        value = keyring.get_password(SERVICE, cfg.relay.username)
    except Exception:
        return None
    return value if isinstance(value, str) else None
