"""Where `relay-agent install` puts things: paths, owners and modes (pure constants)."""

from __future__ import annotations

import os

USER = "relay-agent"
HOME = "/var/spool/relay-agent"
ORIG_SUFFIX = ".relay-agent-orig"
UNIT_EXEC = "/usr/local/lib/relay-agent/venv/bin/relay-agent"
STUB_DIR = "/usr/lib/relay-agent"
MANIFEST = "/var/lib/relay-agent/install-manifest"
UNIT = "/etc/systemd/system/relay-agent.service"
SYSUSERS = "/usr/lib/sysusers.d/relay-agent.conf"
TMPFILES = "/usr/lib/tmpfiles.d/relay-agent.conf"
CONFIG_DIR = "/etc/relay-agent"
CONFIG = "/etc/relay-agent/config.toml"
DKIM_DIR = "/etc/relay-agent/dkim"
QUEUE = "/var/spool/relay-agent"
MAILDROP = "/var/spool/relay-agent-maildrop"
SERVICE = f"{USER}:{USER}"
# (path, owner:group, mode). DKIM keys: root's, readable by the service's group only.
DIRS = (
    (CONFIG_DIR, "root:root", 0o755),
    (DKIM_DIR, f"root:{USER}", 0o750),
    (QUEUE, SERVICE, 0o700),
    (MAILDROP, SERVICE, 0o1733),
    (os.path.dirname(MANIFEST), "root:root", 0o755),
)
# (public path, stub it should run); /usr/lib/sendmail is what old scripts call.
LINKS = (
    ("/usr/sbin/sendmail", "sendmail"),
    ("/usr/bin/mailq", "mailq"),
    ("/usr/lib/sendmail", "sendmail"),
    # sendmail run as newaliases is `sendmail -bi`: a no-op. Postfix's path and Debian's MTA path.
    ("/usr/bin/newaliases", "sendmail"),
    ("/usr/sbin/newaliases", "sendmail"),
)


def in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else path
