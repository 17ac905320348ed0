"""Telling systemd about the install: reload, sysusers, tmpfiles; on uninstall, stop the service.

Only a live systemd on this very root can be told anything; otherwise the steps say what to run later.
"""

from __future__ import annotations

import os
import shlex
from functools import partial

from agent.install.layout import CONFIG, CONFIG_DIR
from agent.install.steps import Step, noop, run, run_quietly

ACTIVATE = (
    ["systemctl", "daemon-reload"],
    ["systemd-sysusers", "relay-agent.conf"],
    ["systemd-tmpfiles", "--create", "relay-agent.conf"],
)


def systemd_running(root: str) -> bool:
    # sd_booted(3): only a live systemd on this very root can be told to reload.
    return root == "/" and os.path.isdir("/run/systemd/system")


def activation_steps(root: str, install: bool) -> list[Step]:
    cmds = ACTIVATE if install else ACTIVATE[:1]
    if systemd_running(root):
        steps = [Step(shlex.join(c), partial(run, c)) for c in cmds]
    else:
        where = "this host" if root == "/" else root
        todo = "; ".join(shlex.join(c) for c in cmds)
        steps = [Step(f"systemd is not running on {where}: run there later: {todo}", noop)]
    if install:
        steps.append(
            Step(
                f"next: edit {CONFIG}, store the relay password (relay-agent credentials set, or "
                f"{CONFIG_DIR}/relay-password 0600 root; an [[account]]'s: --account NAME, or "
                f"relay-password-NAME, then run install again), then: systemctl enable --now relay-agent",
                noop,
            )
        )
    return steps


def disable_steps(root: str) -> list[Step]:
    if not systemd_running(root):
        return []
    cmd = ["systemctl", "disable", "--now", "relay-agent.service"]
    return [Step(shlex.join(cmd), partial(run_quietly, cmd))]
