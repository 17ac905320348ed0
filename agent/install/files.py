"""The files install writes (systemd unit and snippets, sample config, digest) and removes on
uninstall (those, and the stubs).

They live in the repository's systemd/ and examples/; a wheel carries them as agent/_systemd and
agent/_examples (pyproject maps those packages onto the same directories), so `install` works
from a checkout, an editable install and a wheel alike.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from agent import durable
from agent.errors import AgentError
from agent.install.layout import CONFIG, STUB_DIR, SYSUSERS, TMPFILES, UNIT, UNIT_EXEC, in_root
from agent.install.steps import Step, noop


def shipped(rel: str) -> str:
    """The text of a shipped file, e.g. "systemd/relay-agent.service"."""
    package = Path(__file__).resolve().parents[1]  # agent/
    top, _, name = rel.partition("/")
    for path in (package.parent / rel, package / f"_{top}" / name):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise AgentError(f"cannot find {rel}: neither beside agent/ nor inside the installed package")


def render_unit(text: str, venv_bin: str) -> str:
    return text.replace(UNIT_EXEC, os.path.join(venv_bin, "relay-agent"))


def write_file(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    durable.write(path, text.encode("utf-8"), mode=mode, tmp=f"{path}.relay-agent-tmp")


def file_steps(root: str, venv_bin: str) -> list[Step]:
    unit = render_unit(shipped("systemd/relay-agent.service"), venv_bin)
    copies = [
        (UNIT, unit, f" (ExecStart={venv_bin}/relay-agent run)"),
        (SYSUSERS, shipped("systemd/relay-agent.sysusers"), ""),
        (TMPFILES, shipped("systemd/relay-agent.tmpfiles"), ""),
    ]
    steps = [
        Step(
            f"file {in_root(root, path)} mode 0644{note}",
            partial(write_file, in_root(root, path), text, 0o644),
        )
        for path, text, note in copies
    ]
    config = in_root(root, CONFIG)
    if os.path.lexists(config):
        steps.append(Step(f"keep existing config {config}", noop))
    else:
        sample = shipped("examples/config.toml")
        # 0644: sendmail reads it as the submitting user; it never holds the password.
        steps.append(Step(f"sample config {config} (edit it)", lambda: write_file(config, sample, 0o644)))
    steps.append(Step(f"sendmail's config digest beside {config}", partial(write_digest, config)))
    return steps


def write_digest(config_path: str) -> str:
    """Best effort: without a fresh digest sendmail still works, only slower."""
    from agent import config
    from agent.submit import config_cache

    try:
        cfg = config.load(config_path)
    except AgentError as exc:
        return f"not written, the config needs fixing first: {exc.message}"
    return "" if config_cache.write(cfg) else "not written (sendmail parses the TOML until then)"


def removal_steps(root: str) -> list[Step]:
    paths = (f"{STUB_DIR}/sendmail", f"{STUB_DIR}/mailq", STUB_DIR, UNIT, SYSUSERS, TMPFILES)
    return [
        Step(f"remove {in_root(root, path)}", partial(remove, in_root(root, path)))
        for path in paths
        if os.path.lexists(in_root(root, path))
    ]


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)  # the stub dir, emptied by the steps before
    else:
        os.unlink(path)
