"""Writing the `#!python -SE` stubs (agent/submit/stub.py renders them) that /usr/sbin/sendmail and
mailq run.
"""

from __future__ import annotations

import os
import subprocess
from functools import partial

from agent.errors import AgentError
from agent.install.files import write_file
from agent.install.layout import STUB_DIR, in_root
from agent.install.steps import Step

ENTRIES = ("sendmail", "mailq")


def stub_steps(root: str, venv_bin: str) -> list[Step]:
    return [
        Step(
            f"stub {in_root(root, f'{STUB_DIR}/{entry}')} mode 0755 (runs {venv_bin}/python -S -E)",
            partial(write_stub, root, entry, venv_bin),
        )
        for entry in ENTRIES
    ] + [
        Step(
            "sendmail's fast-path bundle (agent/__pycache__, see agent/submit/bytecode_bundle.py)",
            partial(write_bundle, venv_bin),
        )
    ]


def stub_dirs(venv_bin: str) -> list[str]:
    """sys.path the stubs need under `python -S`: the venv's site-packages and agent's parent."""
    code = "from agent.submit import stub; print(*stub.default_site_dirs(), sep='\\n')"
    python = os.path.join(venv_bin, "python")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AgentError(f"{python} cannot import agent: {proc.stderr.strip().splitlines()[-1:]}")
    return list(dict.fromkeys(p for p in proc.stdout.splitlines() if p))


def write_stub(root: str, entry: str, venv_bin: str) -> None:
    try:
        from agent.submit import stub
    except ImportError as exc:
        raise AgentError(f"cannot render the {entry} stub: {exc}") from None

    text = stub.render(entry, os.path.join(venv_bin, "python"), stub_dirs(venv_bin))
    write_file(in_root(root, f"{STUB_DIR}/{entry}"), text, 0o755)


def write_bundle(venv_bin: str) -> None:
    """Built now, as root, so that the first sendmail (often not root: it cannot) finds it."""
    code = (
        "import sys, agent, os; from agent.submit import bytecode_bundle\n"
        "sys.exit(0 if bytecode_bundle.refresh(os.path.dirname(agent.__file__)) else 1)"
    )
    python = os.path.join(venv_bin, "python")
    if subprocess.run([python, "-c", code], capture_output=True, check=False).returncode != 0:
        raise AgentError(f"cannot write sendmail's fast-path bundle with {python}")
