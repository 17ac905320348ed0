"""Install / uninstall relay-agent on a host or into a target root (`--root DIR`).

`plan()` and `plan_uninstall()` only look at the target tree and return the steps
to take; `execute()` prints each step and runs it (or, with dry_run, only prints).
A dry run therefore shows exactly what a real run would do.

The steps come from modules with one job each: `user` (the service user and its
directories), `files` (systemd unit and snippets, sample config, digest), `stubs`,
`links` with `aside` and `manifest` (what another MTA owns is put aside, never
overwritten), `dropin` (the unit's drop-in for the config's accounts and capture mode) and `systemd`.
"""

from __future__ import annotations

from agent.install.aside import dpkg_available
from agent.install.dropin import dropin_removal_steps, dropin_steps
from agent.install.files import file_steps, removal_steps, render_unit
from agent.install.layout import HOME, MAILDROP, QUEUE, UNIT_EXEC, USER
from agent.install.links import link_steps, unlink_steps
from agent.install.manifest import manifest_removal_steps
from agent.install.steps import Step, execute
from agent.install.stubs import stub_steps
from agent.install.systemd import activation_steps, disable_steps
from agent.install.user import data_steps, dir_steps, lookup_ids, user_step

# What cli/install.py and the tests use from here.
__all__ = [
    "HOME",
    "MAILDROP",
    "QUEUE",
    "UNIT_EXEC",
    "USER",
    "Step",
    "dpkg_available",
    "execute",
    "lookup_ids",
    "plan",
    "plan_dropin",
    "plan_uninstall",
    "render_unit",
]


def plan(root: str, venv_bin: str, dpkg: bool) -> list[Step]:
    """Every step of an install into `root` ("/" for this host), looking only."""
    steps = [user_step(root), *dir_steps(root)]
    steps += file_steps(root, venv_bin)
    steps += dropin_steps(root)  # after the sample config: what the config asks of the unit
    steps += stub_steps(root, venv_bin)
    steps += link_steps(root, dpkg)
    steps += activation_steps(root, install=True)
    return steps


def plan_dropin(root: str) -> list[Step]:
    """Only the unit's drop-in the config asks for, and systemd told: what a package install needs
    after an [[account]] is added or capture mode chosen (apt owns the rest)."""
    return [*dropin_steps(root), *activation_steps(root, install=False)]


def plan_uninstall(root: str, dpkg: bool, purge: bool) -> list[Step]:
    """Every step of undoing an install in `root`, looking only; --purge also takes the data."""
    steps = disable_steps(root)
    steps += unlink_steps(root, dpkg)
    steps += removal_steps(root)
    steps += dropin_removal_steps(root)
    steps += activation_steps(root, install=False)
    steps += data_steps(root, purge)
    steps += manifest_removal_steps(root)
    return steps
