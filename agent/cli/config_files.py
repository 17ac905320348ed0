"""`config check`: open every file the config names, as the daemon would, and say which it cannot use.

The config itself (config.py) is pure; the files it names are checked here, each by the code
the daemon uses for it: the DKIM keys are loaded, the TLS context is built with relay.ca_file,
and relay.password_file is opened under the same ownership and permission rules.
"""

from __future__ import annotations

import os

from agent.config import Config
from agent.dkim.signing import Signer
from agent.relay import credentials, tls


def check_files(cfg: Config) -> None:
    """Raises ConfigError (exit 78) naming the first file that cannot be used."""
    Signer(cfg)
    tls.check_ca_file(cfg.relay.ca_file)
    for account in cfg.accounts:
        credentials.check_password_file(account, _service_user())


def _service_user() -> tuple[int, ...]:
    """The unit runs `config check` as root before starting the daemon as the service user, so
    root also accepts a password file owned by that user, which the daemon itself accepts."""
    if os.geteuid() != 0:
        return ()
    import pwd

    from agent.install.layout import USER

    try:
        return (pwd.getpwnam(USER).pw_uid,)
    except KeyError:
        return ()  # not installed: the daemon runs as whoever starts it
