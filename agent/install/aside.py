"""Putting another MTA's file aside before install links over it, and back on uninstall.

Never overwritten: with dpkg by a local `dpkg-divert --rename` (dpkg then keeps the other
MTA's package updates away from our links), otherwise renamed to `<path>.relay-agent-orig`
and recorded in the manifest, so uninstall puts them back.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from functools import partial

from agent.errors import AgentError
from agent.install.layout import ORIG_SUFFIX, in_root
from agent.install.manifest import append_manifest
from agent.install.steps import Step, run


def dpkg_available(root: str) -> bool:
    return shutil.which("dpkg-divert") is not None and os.path.isfile(in_root(root, "/var/lib/dpkg/status"))


def dpkg_divert(root: str, *args: str) -> list[str]:
    return ["dpkg-divert", *([] if root == "/" else [f"--root={root}"]), *args]


def aside_steps(root: str, path: str, dpkg: bool) -> list[Step]:
    target = in_root(root, path)
    if dpkg:
        cmd = dpkg_divert(root, "--local", "--rename", "--divert", path + ORIG_SUFFIX, "--add", path)
        return [Step(f"divert: {shlex.join(cmd)}", lambda: divert(root, cmd, path))]
    if os.path.lexists(target):
        return [Step(f"move {target} to {target}{ORIG_SUFFIX}", lambda: move_aside(root, path))]
    return []


def divert(root: str, cmd: list[str], path: str) -> None:
    run(cmd)
    append_manifest(root, f"divert\t{path}")


def move_aside(root: str, path: str) -> None:
    target = in_root(root, path)
    if os.path.lexists(target + ORIG_SUFFIX):
        raise AgentError(f"{target}{ORIG_SUFFIX} exists already: restore or remove it first")
    os.rename(target, target + ORIG_SUFFIX)
    append_manifest(root, f"move\t{path}")


def restore_steps(root: str, path: str, how: str | None, dpkg: bool) -> list[Step]:
    """`how` is what the manifest says was done to `path`; without it, dpkg is asked."""
    target = in_root(root, path)
    if how == "divert" or (how is None and dpkg and is_diverted(root, path)):
        cmd = dpkg_divert(root, "--local", "--rename", "--divert", path + ORIG_SUFFIX, "--remove", path)
        return [Step(f"restore: {shlex.join(cmd)}", partial(run, cmd))]
    if os.path.lexists(target + ORIG_SUFFIX):
        return [Step(f"restore {target} from {target}{ORIG_SUFFIX}", partial(restore, target))]
    return []


def is_diverted(root: str, path: str) -> bool:
    proc = subprocess.run(dpkg_divert(root, "--truename", path), capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == path + ORIG_SUFFIX


def restore(target: str) -> None:
    if os.path.lexists(target):
        raise AgentError(f"{target} exists and is not relay-agent's: {target}{ORIG_SUFFIX} left in place")
    os.rename(target + ORIG_SUFFIX, target)
