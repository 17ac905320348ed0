"""Timed blocks of `sendmail -t -i` for bench_sendmail.py: bench/timeloop.py's runs, their rows,
and one source tree's relay-agent blocks (its stub with the daemon down, up, and as nobody).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
import trees

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
WARMUP, RSS_RUNS = 3, 5  # untimed runs of each block (timeloop.py's --warmup) and peak-RSS runs


def timeloop(
    cmd: list[str],
    msg: Path,
    runs: int,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    python: str = sys.executable,
    rss_runs: int = RSS_RUNS,
    gap: float = 0.0,
) -> dict[str, Any]:
    """Run bench/timeloop.py (optionally inside `prefix`, e.g. a peer's namespace)."""
    loop = [python, str(common.BENCH / "timeloop.py"), "--runs", str(runs), "--input", str(msg)]
    loop += ["--gap", str(gap)]
    loop += ["--warmup", str(WARMUP), "--rss-runs", str(rss_runs), "--"]
    proc = subprocess.run(
        [*(prefix or []), *loop, *cmd], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip().splitlines()[-1]
    return result


def summarize(name: str, res: dict[str, Any], note: str = "") -> dict[str, Any]:
    if "error" in res:
        return {
            "name": name,
            "median_ms": None,
            "p90_ms": None,
            "rss_mib": None,
            "runs": 0,
            "failures": None,
            "note": f"could not run: {res['error']}",
        }
    ms = [n / 1e6 for n in res["ns"]]
    rss = [k / 1024 for k in res["rss_kib"]]
    if res["failures"]:
        note = (note + "; " if note else "") + f"{res['failures']} runs failed: {res.get('stderr', '')}"
    return {
        "name": name,
        "median_ms": common.median(ms),
        "p90_ms": common.p90(ms),
        "rss_mib": common.median(rss) if rss else None,
        "runs": len(ms),
        "failures": res["failures"],
        "note": note,
        "samples_ms": ms,
    }


def pooled(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's timed blocks as one result; an error in any block is the row's."""
    for b in blocks:
        if "error" in b:
            return b
    out: dict[str, Any] = {
        "ns": [n for b in blocks for n in b["ns"]],
        "rss_kib": [k for b in blocks for k in b["rss_kib"]],
        "failures": sum(b["failures"] for b in blocks),
        "sink": sum(b.get("sink", 0) for b in blocks),
    }
    stderr = [b["stderr"] for b in blocks if "stderr" in b]
    if stderr:
        out["stderr"] = stderr[-1]
    return out


class Ours:
    """One tree's relay-agent timed blocks (its own daemon, maildrop and installed-style stub),
    what they submitted and what they left in the maildrop. Row names carry `prefix`."""

    def __init__(self, env: Any, msg: Path, tree: trees.Tree, tmp: Path, prefix: str = "") -> None:
        self.env, self.msg, self.tree, self.prefix = env, msg, tree, prefix
        self.stub = str(tree.stub(tmp))
        self.blocks: dict[str, list[dict[str, Any]]] = {}
        self.dropped: dict[str, int] = {}
        self.submitted = 0

    def _time(self, name: str, cmd: str, runs: int, rss: int, gap: float = 0.0) -> None:
        res = timeloop([*cmd.split(), "-t", "-i"], self.msg, runs, env=self.env.env, rss_runs=rss, gap=gap)
        self.blocks.setdefault(self.prefix + name, []).append(res)
        self.submitted += runs + WARMUP + rss  # the warm-up and RSS runs are real mail too

    def down(self, name: str, cmd: str, runs: int, rss: int) -> None:
        before = _maildrop_count(self.env.maildrop)
        self._time(name, cmd, runs, rss)
        dropped = _maildrop_count(self.env.maildrop) - before
        self.dropped[self.prefix + name] = self.dropped.get(self.prefix + name, 0) + dropped

    def up(self, cmds: list[tuple[str, str, float]], runs: int, rss: int) -> None:
        """Each command (name, command line, rest before each run) timed with the tree's daemon
        running, once it has taken in what the maildrop held; the queue drained before the
        daemon stops. Paced commands take no RSS runs: their unpaced row has them."""
        try:
            self.tree.start(self.env)
            self.env.wait_queue_empty(60)
        except (RuntimeError, TimeoutError) as exc:
            for name, _, _ in cmds:
                self.blocks.setdefault(self.prefix + name, []).append(
                    {"error": f"daemon: {common.brief(str(exc))}"}
                )
            self.env.stop()
            return
        try:
            for name, cmd, gap in cmds:
                self._time(name, cmd, runs, 0 if gap else rss, gap)
            self.env.wait_queue_empty(60)
        finally:
            self.env.stop()

    def row(self, name: str, note: str) -> dict[str, Any]:
        blocks = self.blocks[self.prefix + name]
        out = summarize(self.prefix + name, pooled(blocks), note)
        out["block_ms"] = [common.median(b["ns"]) / 1e6 if b.get("ns") else None for b in blocks]
        return out


def _maildrop_count(path: Path) -> int:
    return sum(1 for n in os.listdir(path) if not n.startswith(".")) if path.is_dir() else 0
