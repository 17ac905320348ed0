"""Daemon start-up time and memory with a big queue (100,000 messages), relay down; the queue CLI.

The queue is a fixture written straight to disk in the agent/queue/queue_file.py format (no fsync, see
common.write_queue_files). The relay is a stand-in that is down, so nothing drains and every
attempt defers. Start-up = spawn of `relay-agent run` until the Unix socket answers 220 (polled
every 10 ms). Memory: VmRSS at that moment and VmRSS/VmHWM after `--settle` seconds of the
daemon working through the due queue. Budgets: RSS <= 60 MB, start-up <= 5 s.

Then, with the daemon stopped (the queue as it left it, state files of the attempts included):
`mailq` (wall time of the process, best of 3, output to /dev/null) and `relay-agent queue delete
--all` (one run: it empties the queue). Budgets: mailq <= 1 s, delete <= 5 s. CPU time (user +
sys of the child) is noted beside each: on a shared machine it is the steadier figure.

To measure another tree (e.g. a `git worktree` of an older commit) run this script with
PYTHONPATH=that-tree: the commands timed are spawned with it.

    .venv/bin/python bench/bench_queue.py [--count 100000] [--settle 10] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import trees

RSS_BUDGET_MB = 60.0
FLUSH_SETTLE_S = 3.0  # the relay is down: a flush makes every message due and defers it again
STARTUP_BUDGET_S = 5.0
MAILQ_BUDGET_S = 1.0
DELETE_BUDGET_S = 5.0


def answers_220(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(str(path))
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def start_and_time(env: Any, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn the daemon the way AgentEnv.start does, but poll every 10 ms and time it."""
    log = open(env.log_path, "ab")  # noqa: SIM115 (closed when the daemon is stopped)
    env._log_fh = log
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [common.VENV_BIN / "relay-agent", "--config", str(env.config), "run"],
        env=env.env,
        stdout=log,
        stderr=log,
    )
    env.proc = proc
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {common.brief(env.log())}")
        if answers_220(env.socket):
            return proc, time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"daemon did not answer 220 within {timeout:g} s: {common.brief(env.log())}")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; it must exit 0."""
    before = os.times()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    wall = time.monotonic() - t0
    after = os.times()
    if proc.returncode:
        raise RuntimeError(f"{cmd[-1]} exited {proc.returncode}: {common.brief(proc.stderr.decode())}")
    return wall, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def queue_cli(env: Any) -> dict[str, Any]:
    """mailq (best of 3) and queue delete --all, the daemon stopped."""
    mailq = min(timed([str(common.VENV_BIN / "mailq")], env.env) for _ in range(3))
    delete = timed([str(common.VENV_BIN / "relay-agent"), "queue", "delete", "--all"], env.env)
    left = sum(1 for _ in (env.queue_dir / "msg").iterdir())
    return {
        "mailq_s": mailq[0],
        "mailq_cpu": mailq[1],
        "delete_s": delete[0],
        "delete_cpu": delete[1],
        "left": left,
    }


def measure(count: int, settle: float, tmp: Path) -> dict[str, Any]:
    from tests.support.agent_env import AgentEnv
    from tests.support.relay_standin import RelayStandin

    with RelayStandin() as relay:
        relay.down()  # connection refused: every attempt defers, nothing drains
        env = AgentEnv(tmp, relay, rate=10.0)
        t = time.monotonic()
        if count:
            common.write_queue_files(env.queue_dir, count, common.message())
        fixture_s = time.monotonic() - t
        proc, startup = start_and_time(env)
        try:
            at_ready = trees.proc_mem(proc.pid)
            time.sleep(settle)
            later = trees.proc_mem(proc.pid)
            env.cli("queue", "flush")  # every message due at once: the index must not double
            time.sleep(FLUSH_SETTLE_S)
            flushed = trees.proc_mem(proc.pid)
            alive = proc.poll() is None
        finally:
            rc = env.stop(timeout=30)
        remaining = sum(1 for _ in (env.queue_dir / "msg").iterdir())
        cli = queue_cli(env) if count else {}
    return cli | {
        "count": count,
        "startup_s": startup,
        "rss_ready": at_ready["VmRSS"],
        "rss_later": later["VmRSS"],
        "hwm": later["VmHWM"],
        "rss_flushed": flushed["VmRSS"],
        "hwm_flushed": flushed["VmHWM"],
        "alive": alive,
        "exit": rc,
        "remaining": remaining,
        "fixture_s": fixture_s,
        "settle": settle,
    }


def rows_for(r: dict[str, Any]) -> list[common.Row]:
    n = f"{r['count']:,} queued"
    kept = f"{r['remaining']:,} still queued after, exit {r['exit']} on SIGTERM"
    rows = [
        common.row(
            f"daemon start-up to 220, {n}",
            r["startup_s"],
            "s",
            "<= 5 s",
            r["startup_s"] <= STARTUP_BUDGET_S,
            f"fixture written in {r['fixture_s']:.1f} s",
        ),
        common.row(
            f"daemon VmRSS at 220, {n}", r["rss_ready"], "MB", "<= 60 MB", r["rss_ready"] <= RSS_BUDGET_MB
        ),
        common.row(
            f"daemon VmRSS after {r['settle']:g} s, {n}",
            r["rss_later"],
            "MB",
            "<= 60 MB",
            r["rss_later"] <= RSS_BUDGET_MB,
            kept,
        ),
        common.row(
            f"daemon VmHWM (peak) after {r['settle']:g} s, {n}",
            r["hwm"],
            "MB",
            "<= 60 MB",
            r["hwm"] <= RSS_BUDGET_MB,
        ),
        common.row(
            f"daemon VmRSS {FLUSH_SETTLE_S:g} s after `queue flush`, {n}",
            r["rss_flushed"],
            "MB",
            "<= 60 MB",
            r["rss_flushed"] <= RSS_BUDGET_MB,
            f"VmHWM {r['hwm_flushed']:.1f} MB",
        ),
    ]
    if "mailq_s" in r:
        rows += [
            common.row(
                f"mailq, {r['remaining']:,} queued (daemon stopped)",
                r["mailq_s"],
                "s",
                "<= 1 s",
                r["mailq_s"] <= MAILQ_BUDGET_S,
                f"CPU {r['mailq_cpu']:.2f} s; best of 3",
            ),
            common.row(
                f"queue delete --all, {r['remaining']:,} queued",
                r["delete_s"],
                "s",
                "<= 5 s",
                r["delete_s"] <= DELETE_BUDGET_S and r["left"] == 0,
                f"CPU {r['delete_cpu']:.2f} s; {r['left']} left after",
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="1,000 messages, 1 s, for a smoke test")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    count, settle = (1000, 1.0) if args.quick else (args.count, args.settle)
    rows: list[common.Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue.") as d:
        for n in (0, count):
            (Path(d) / str(n)).mkdir()
            try:
                rows += rows_for(measure(n, settle if n else 1.0, Path(d) / str(n)))
            except Exception as exc:  # report what broke, keep the other figures
                rows.append(common.row(f"{n:,} queued: could not measure", None, note=common.brief(str(exc))))
    print(common.rows_table(rows))
    common.write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
