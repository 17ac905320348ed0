"""Pacing that listens, as a figure: a relay that answers `421 4.7.0` to MAIL FROM beyond N a
second, a backlog sent by a real daemon configured for a faster rate, with `adaptive = true` and
beside it the same run with `adaptive = false`.

For each run: what the agent settled at (MAIL FROM attempts a second at the relay, refused ones
included, after the first SETTLE seconds; and the messages it accepted a second), the 421s per
1,000 messages, the whole backlog's time, and with `adaptive = true` the time to recover: from
the moment the relay stops pushing back until `status --json` shows the configured rate again.
The relay stand-in (tests/support/relay_standin.py, STARTTLS + AUTH) counts the MAIL FROMs.
Three runs: adaptive, then without it at retry_initial = 1 s (the tests' setting) and at
--retry-initial (fewer messages: each 421 holds the account back that long).

    .venv/bin/python bench/bench_pushback.py [--count 200] [--limit 5] [--rate 20]
        [--recover-after 5] [--retry-initial 10] [--out bench/results/pushback.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from agent.queue import queue_file
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv
from tests.support.relay_standin import RelayStandin

SETTLE = 5.0  # seconds the agent is given to find the relay's limit
BODY = b"From: app@example.com\r\nTo: t@example.net\r\nSubject: push-back bench\r\n\r\nbody\r\n"


def _fill(env: AgentEnv, n: int) -> None:
    q = Queue(str(env.queue_dir))
    q.ensure_dirs()
    for i in range(n):
        q.enter(queue_file.Envelope("app@example.com", (f"r{i}@example.net",), time.time()), BODY)


def _rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def _effective(env: AgentEnv) -> float:
    out = env.cli("status", "--json")
    return float(json.loads(out.stdout)["accounts"][0]["effective_rate"])


def _recover(env: AgentEnv, relay: RelayStandin, rate: float, timeout: float) -> tuple[float, float]:
    """The relay stops pushing back: seconds until the agent is back at `rate`, and where it started."""
    start_rate = _effective(env)
    relay.push_back(None)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _effective(env) >= rate:
            return time.monotonic() - t0, start_rate
        time.sleep(0.2)
    return float("nan"), start_rate


def run(adaptive: bool, args: argparse.Namespace, retry_initial: float, count: int) -> dict[str, Any]:
    limits = {"adaptive": adaptive, "min_rate": 1.0, "recover_after": args.recover_after, "connections": 2}
    queue = {"retry_initial": retry_initial, "retry_max": max(2.0, retry_initial * 4)}
    with RelayStandin() as relay, tempfile.TemporaryDirectory(prefix="bench-pushback-") as tmp:
        relay.push_back(args.limit)
        env = AgentEnv(Path(tmp), relay, rate=args.rate, extra={"limits": limits, "queue": queue})
        _fill(env, count)
        env.start()
        try:
            t0 = time.monotonic()
            relay.wait_for(count, timeout=count * (retry_initial + 1) + 60)
            backlog = time.monotonic() - t0
            refused, tries = len(relay.pushback_times), relay.mail_from_times
            accepted = [m.time for m in relay.messages]
            timeout = args.recover_after * (args.rate / args.limit + 8)
            recovered, from_rate = _recover(env, relay, args.rate, timeout) if adaptive else (0.0, args.rate)
        finally:
            env.stop()
        bounced = env.log().count("status=bounced")
    start = min(tries)
    return {
        "adaptive": adaptive,
        "tries_rate": _rate([t for t in tries if t >= start + SETTLE]),
        "accepted_rate": _rate([t for t in accepted if t >= start + SETTLE]),
        "retry_initial": retry_initial,
        "count": count,
        "per_1000": refused / count * 1000,
        "refused": refused,
        "backlog_s": backlog,
        "recover_s": recovered,
        "recover_from": from_rate,
        "delivered": len(accepted),
        "bounced": bounced,
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: str, load0: str) -> str:
    rows = []
    for r in results:
        recover = f"{r['recover_s']:.1f} s (from {r['recover_from']:.3g} msg/s)" if r["adaptive"] else "n/a"
        rows.append(
            [
                "true" if r["adaptive"] else "false",
                f"{r['retry_initial']:g} s",
                r["count"],
                args.limit,
                f"{r['tries_rate']:.2f}",
                f"{r['accepted_rate']:.2f}",
                f"{r['per_1000']:.0f} ({r['refused']})",
                f"{r['backlog_s']:.1f} s",
                recover,
                f"{r['delivered']} / {r['bounced']}",
            ]
        )
    headers = [
        "adaptive",
        "retry_initial",
        "messages",
        "relay limit N (msg/s)",
        "settled: MAIL FROM tries/s",
        "settled: accepted/s",
        "421s per 1,000 msgs (count)",
        "backlog time",
        "time to recover",
        "delivered / bounced",
    ]
    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "?")
    return "\n".join(
        [
            "# Push-back: pacing that listens (bench/bench_pushback.py)",
            "",
            f"- date: {_now()} (started {started})",
            f"- machine: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            f"- load average (1, 5, 15 min): {load0} at the start, {_load()} at the end",
            f"- run: a queued backlog (its size: see the table), agent rate {args.rate:g} msg/s over "
            "2 connections, "
            f"min_rate 1, recover_after {args.recover_after:g} s; the relay stand-in answers "
            f"`421 4.7.0` to a MAIL FROM beyond {args.limit} accepted in the last second (and closes)",
            f"- settled: rates over the MAIL FROMs after the first {SETTLE:g} s",
            "- adaptive = false: a 421 is an ordinary temporary failure, as before: the relay's account",
            "  backs off for min(30 s, retry_initial) and the message is deferred by its backoff; the",
            "  run with retry_initial = 1 s (the tests' setting) flatters it, the default is 60 s",
            "",
            common.table(headers, rows),
            "",
        ]
    )


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--recover-after", type=float, default=5.0)
    parser.add_argument("--retry-initial", type=float, default=10.0)
    parser.add_argument("--out", default=str(common.BENCH / "results" / "pushback.md"))
    args = parser.parse_args()
    started, load0 = _now(), _load()
    results = [
        run(True, args, args.retry_initial, args.count),
        run(False, args, 1.0, args.count),
        run(False, args, args.retry_initial, args.count // 4),
    ]
    text = report(results, args, started, load0)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
