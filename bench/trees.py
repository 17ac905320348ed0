"""Run the daemon and `sendmail` of a given source tree, so one bench run can compare two checkouts.

    git worktree add /work/before-bench HEAD        # or: git archive HEAD | tar -x -C DIR
    .venv/bin/python bench/bench_memory.py --tree /work/before-bench

Both trees run on this checkout's venv (its interpreter and installed dependencies): the
daemon as `python -P -c 'from agent.main import main; main()'` with PYTHONPATH=TREE (the
venv's editable finder comes after PYTHONPATH, and -P keeps the current directory off the
path), and `sendmail` as the `#!python -SE` stub that the tree's OWN agent.submit.stub renders
(what its `relay-agent install` would put at /usr/sbin/sendmail), with TREE first on its path.
The test environment (config, key, relay settings) is this checkout's tests/support/agent_env.
Either tree may predate the folder split (its entry point agent.entry, its stub agent.stub): the
-c code below imports whichever module the tree has.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import common


def _either(new: str, old: str, path: str) -> str:
    """`python -c` lines: import statement `new` if the tree's agent/ has `path`, else `old` (a
    tree from before the folder split). Asked of the files, not by trying the import: the venv's
    editable finder would find a module the tree lacks in this checkout."""
    return (
        "import os\nimport agent\n"
        f"if os.path.isfile(os.path.join(agent.__path__[0], {path!r})):\n    {new}\n"
        f"else:\n    {old}\n"
    )


DAEMON_CODE = (
    "import sys\nsys.argv[0] = 'relay-agent'\n"
    + _either("from agent.main import main", "from agent.entry import main", "main.py")
    + "main()\n"
)
STUB_CODE = (
    "import sys\n"
    + _either("from agent.submit import stub", "from agent import stub", "submit/stub.py")
    + "sys.stdout.write(stub.render('sendmail', stub.default_python(), stub.default_site_dirs()))\n"
)


def round_order(tree_list: list[Tree], r: int) -> list[Tree]:
    """The trees in the order round `r` runs them: reversed every other round, so that the
    machine's drift during the run falls on each tree alike."""
    return tree_list if r % 2 == 0 else tree_list[::-1]


class Tree:
    """One source tree: its label in the tables, its daemon command and its sendmail stub."""

    def __init__(self, path: str | Path, label: str) -> None:
        self.path = Path(path).resolve()
        self.label = label
        if not (self.path / "agent" / "__init__.py").is_file():
            raise SystemExit(f"{self.path}: no agent/ package there (not a relay-agent checkout)")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env["PYTHONPATH"] = str(self.path)
        return env

    def stub(self, directory: Path) -> Path:
        """The tree's own stub, rendered by the tree's agent.submit.stub for this venv's python."""
        out = subprocess.run(
            [str(common.VENV_PYTHON), "-P", "-c", STUB_CODE],
            env=self.env(dict(os.environ)),
            cwd=str(directory),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if str(self.path) not in out:
            raise RuntimeError(f"{self.label}: its stub does not import from {self.path}:\n{out}")
        path = directory / f"sendmail-{self.label}"
        path.write_text(out)
        path.chmod(0o755)
        return path

    def start(
        self, agent_env: Any, timeout: float = 60.0, code: str = DAEMON_CODE
    ) -> subprocess.Popen[bytes]:
        """`relay-agent run` of this tree for an AgentEnv (which can then .stop() it); `code` is
        the python -c text that runs it (bench_concurrent.py --profile wraps it in cProfile)."""
        log = open(agent_env.log_path, "ab")  # noqa: SIM115 - closed by AgentEnv.stop
        agent_env._log_fh = log
        proc = subprocess.Popen(
            [str(common.VENV_PYTHON), "-P", "-c", code, "--config", str(agent_env.config), "run"],
            env=self.env(agent_env.env),
            cwd=str(agent_env.dir),
            stdout=log,
            stderr=log,
        )
        agent_env.proc = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                agent_env.proc = None
                log.close()
                raise RuntimeError(
                    f"{self.label} daemon exited {proc.returncode}: {common.brief(agent_env.log())}"
                )
            if agent_env.listening():
                return proc
            time.sleep(0.02)
        agent_env.stop()
        raise RuntimeError(f"{self.label} daemon did not answer 220 within {timeout:g} s")


def trees(extra: list[str], labels: list[str] | None = None) -> list[Tree]:
    """This checkout ("new", or the first label) plus each --tree (labelled "before", "tree2", ...)."""
    names = list(labels or [])
    out = [Tree(common.REPO, names[0] if names else "new")]
    for i, path in enumerate(extra):
        label = names[i + 1] if len(names) > i + 1 else ("before" if i == 0 else f"tree{i + 1}")
        out.append(Tree(path, label))
    return out


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MB (10^6 bytes, as the budgets are written)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024 / 1e6
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DownRelay:
    """A [relay] that refuses connections: a loopback port nobody listens on."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:  # the port is free once closed; nothing binds it after
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.username, self.password = "bench@example.com", "unused"

    def __enter__(self) -> DownRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def relay_settings(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "tls": "starttls", "username": self.username}

    def finish(self) -> dict[str, Any]:
        return {"count": 0, "last": 0.0, "cpu": 0.0, "connections": 0}
