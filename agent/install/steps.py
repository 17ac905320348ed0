"""Install's unit of work, a described `Step`, and running a list of them (or, dry, only printing).

A plan is built by looking only, so a dry run shows exactly what a real run would do.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import AgentError, PolicyError, TempError


@dataclass(frozen=True)
class Step:
    description: str
    action: Callable[[], object]  # a str it returns is a note for the user


def noop() -> None:
    return None


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise AgentError(f"{cmd[0]} failed ({proc.returncode}): {lines[-1] if lines else 'no output'}")


def run_quietly(cmd: list[str]) -> None:
    # Stopping a unit that was never enabled or started is not an error for uninstall.
    subprocess.run(cmd, capture_output=True, check=False)


def execute(steps: list[Step], dry_run: bool, out: Callable[[str], None] = print) -> None:
    """Print each step and run it; with dry_run only print. Stops at the first failure."""
    for step in steps:
        out(f"{'would: ' if dry_run else ''}{step.description}")
        if dry_run:
            continue
        try:
            note = step.action()
        except PermissionError as exc:
            raise PolicyError(f"{step.description}: {exc.strerror}") from None
        except OSError as exc:
            raise TempError(f"{step.description}: {exc.strerror or exc}") from None
        if isinstance(note, str) and note:
            out(f"  {note}")
