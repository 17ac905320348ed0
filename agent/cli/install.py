"""`relay-agent install` / `relay-agent uninstall`: typer front end of agent/install/plans.py."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from agent.errors import AgentError, PolicyError, UsageError
from agent.install import plans

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Install relay-agent as the system MTA.")

RootOpt = Annotated[str, typer.Option("--root", help="Work on this directory tree instead of /.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every step, change nothing.")]
PurgeOpt = Annotated[bool, typer.Option("--purge", help="Also remove queue, maildrop, config, keys, user.")]
DropinOpt = Annotated[
    bool,
    typer.Option(
        "--only-dropin",
        help="Only rewrite the unit's drop-in from the config (a credential per [[account]], capture_dir"
        " writable): after adding an account or switching to capture, also with the Debian package.",
    ),
]


def _fail(exc: AgentError) -> typer.Exit:
    typer.echo(f"relay-agent: {exc.message}", err=True)
    return typer.Exit(exc.exit_code)


def _checked_root(root: str, dry_run: bool, what: str) -> str:
    if not root:
        raise UsageError("--root must not be empty")
    root = os.path.abspath(root)
    if root != "/" and not os.path.isdir(root):
        raise UsageError(f"--root {root}: no such directory")
    if root == "/" and not dry_run and os.geteuid() != 0:
        raise PolicyError(f"{what} must run as root")
    return root


@app.command("install")
def install(root: RootOpt = "/", dry_run: DryRunOpt = False, only_dropin: DropinOpt = False) -> None:
    """User, directories, systemd units, and sendmail/mailq stubs (see --dry-run)."""
    try:
        root = _checked_root(root, dry_run, "install")
        # The venv this very interpreter belongs to: its relay-agent goes into the unit,
        # its python into the stubs' shebang.
        venv_bin = os.path.dirname(os.path.abspath(sys.executable))
        if only_dropin:
            steps = plans.plan_dropin(root)
        else:
            steps = plans.plan(root, venv_bin, plans.dpkg_available(root))
        plans.execute(steps, dry_run)
    except AgentError as exc:
        raise _fail(exc) from None


@app.command("uninstall")
def uninstall(root: RootOpt = "/", dry_run: DryRunOpt = False, purge: PurgeOpt = False) -> None:
    """Undo install and bring back the previous sendmail; keeps mail and config unless --purge."""
    try:
        root = _checked_root(root, dry_run, "uninstall")
        steps = plans.plan_uninstall(root, plans.dpkg_available(root), purge)
        plans.execute(steps, dry_run)
    except AgentError as exc:
        raise _fail(exc) from None
