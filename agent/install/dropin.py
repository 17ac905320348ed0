"""The unit's drop-in that `install` derives from the config: one systemd credential per relay account,
and in capture mode the Maildir made writable.

The unit itself is the same on every host; what depends on the config goes into
`relay-agent.service.d/from-config.conf`, rewritten by each `relay-agent install` (run it again after
adding an [[account]]) and removed when the config needs nothing there. The credential IDs are the
names the daemon looks for in $CREDENTIALS_DIRECTORY: `relay-password-<account name>`.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING

from agent.errors import AgentError
from agent.install.files import write_file
from agent.install.layout import CONFIG, CONFIG_DIR, SERVICE, in_root
from agent.install.steps import Step
from agent.install.user import make_dir

if TYPE_CHECKING:
    from agent.config import Config

DROPIN_DIR = "/etc/systemd/system/relay-agent.service.d"
DROPIN = f"{DROPIN_DIR}/from-config.conf"
CREDENTIAL = "relay-password"  # + "-<name>" for an [[account]]: what the daemon reads


def credential_ids(cfg: Config) -> list[str]:
    """The credential of every [[account]] (the default account's, relay-password, is in the unit)."""
    return [f"{CREDENTIAL}-{account.name}" for account in cfg.extra_accounts]


def _path_word(path: str) -> str:
    """ReadWritePaths= takes space-separated words; "-": a missing path is no error at start."""
    word = "-" + path
    return f'"{word}"' if any(c.isspace() for c in word) else word


def render(cfg: Config) -> str | None:
    """The drop-in's text for this config; None when it needs none."""
    ids = credential_ids(cfg)
    if not ids and not cfg.capture:
        return None
    lines = [
        f"# Written by `relay-agent install` from {CONFIG}; run it again after adding or removing",
        "# an [[account]] or changing [relay] mode (it rewrites this file), then: systemctl daemon-reload",
        "[Service]",
    ]
    if ids:
        lines.append("# One relay password per [[account]], root-only files read by PID 1; the fallback")
        lines.append("# keeps a missing file from failing the unit, as the unit does for relay-password.")
    for cred in ids:
        lines += [f"LoadCredential={cred}:{CONFIG_DIR}/{cred}", f"SetCredential={cred}:\\n"]
    if cfg.capture:
        lines.append("# mode = capture: every message is written to this Maildir (ProtectSystem=strict).")
        lines.append(f"ReadWritePaths={_path_word(cfg.relay.capture_dir)}")
    return "\n".join(lines) + "\n"


def _load(root: str) -> Config | str:
    """The config install finds in the root (or the sample it is about to write), or why not."""
    from agent import config

    path = in_root(root, CONFIG)
    if not os.path.exists(path):
        return config.from_dict({})  # the shipped sample names no account
    try:
        return config.load(path)
    except AgentError as exc:
        return exc.message


def write_dropin(root: str) -> str:
    """At run time, from the config as it is then: write, or remove a drop-in no longer needed."""
    cfg = _load(root)
    path = in_root(root, DROPIN)
    if isinstance(cfg, str):
        return f"not written, the config needs fixing first: {cfg}"
    text = render(cfg)
    if text is not None:
        write_file(path, text, 0o644)
        return ""
    if os.path.lexists(path):
        os.unlink(path)
        return f"removed {path}: the config needs no drop-in"
    return ""


def dropin_steps(root: str) -> list[Step]:
    """Install: the drop-in, and in capture mode the Maildir's directory if it is missing."""
    cfg = _load(root)
    path = in_root(root, DROPIN)
    if isinstance(cfg, str):
        return [Step(f"drop-in {path}", partial(write_dropin, root))]
    ids = credential_ids(cfg)
    what = ", ".join(f"LoadCredential={cred}" for cred in ids) or "no [[account]]"
    if cfg.capture:
        what += f", ReadWritePaths={cfg.relay.capture_dir}"
    steps = []
    if render(cfg) is not None or os.path.lexists(path):
        steps.append(Step(f"drop-in {path} mode 0644 ({what})", partial(write_dropin, root)))
    capture = in_root(root, cfg.relay.capture_dir) if cfg.capture else ""
    if capture and not os.path.lexists(capture):
        steps.append(
            Step(
                f"directory {capture} mode 0700 owner {SERVICE} (capture mode's Maildir)",
                partial(make_dir, root, cfg.relay.capture_dir, SERVICE, 0o700),
            )
        )
    return steps


def dropin_removal_steps(root: str) -> list[Step]:
    """Uninstall: the drop-in, and its directory when nothing else (`systemctl edit`'s) is in it."""
    path, directory = in_root(root, DROPIN), in_root(root, DROPIN_DIR)
    steps = []
    if os.path.lexists(path):
        steps.append(Step(f"remove {path}", partial(os.unlink, path)))
    if os.path.isdir(directory) and set(os.listdir(directory)) <= {os.path.basename(DROPIN)}:
        steps.append(Step(f"remove {directory}", partial(os.rmdir, directory)))
    return steps
