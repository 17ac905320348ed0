"""Delivery rate: a backlog at `rate = 10`, at `rate = 1000`, and the relay stand-in's own capacity.

1. rate = 10, a 1,000-message backlog (queue files written before the daemon starts): the rate
   the relay stand-in sees, (n - 1) / (t_last - t_first) over its MAIL FROM timestamps, and the
   relay connections used. Budget: within 2 % of 10 msg/s, over few connections.
2. rate = 1000 (the issue's figure) and the limit lifted: 1,000 messages
   submitted over the daemon's Unix socket (smtplib over AF_UNIX from 8 threads in parallel,
   50 messages per session) until the upstream holds them all; three runs of each, the median.
   Budget: >= 300 msg/s end to end. Upstream: bench/tls_sink.py (STARTTLS,
   AUTH, whole-buffer reads), because on 2 cores the aiosmtpd stand-in's own ~1.2 ms of CPU per
   message comes out of the agent's share, while in production the relay is another machine;
   the same run against the aiosmtpd stand-in is reported beside it.
3. the relay stand-in's own capacity: aiosmtplib pushing 1,000 messages over 2 persistent
   STARTTLS+AUTH connections straight at it, so it is clearly not the bottleneck.

The upstreams are TLS ones with a test CA (tests/support/relay_standin.py, bench/tls_sink.py), not
Postfix's smtp-sink used for the peers: relay-agent refuses AUTH without STARTTLS.
Submitters and pushers run in a child process so they do not share the stand-in's GIL.

    .venv/bin/python bench/bench_delivery.py [--count 1000] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from sink_relay import SinkRelay

RATE_TOLERANCE = 0.02
LIFTED_RATE = 1000.0  # the figure; paced evenly, 1 ms apart
NO_LIMIT = 1e9  # "limit lifted": the limiter never waits
LIFTED_BUDGET = 300.0


def socket_message(i: int) -> bytes:
    msg = common.message().replace(b"Bcc: carol@example.net\n", b"")
    return common.crlf(msg.replace(b"Subject: ", f"Message-ID: <bench{i}@example.com>\nSubject: ".encode()))


# ----- child processes -----------------------------------------------------------------------


def child_submit(sock: str, count: int, conns: int, per_conn: int) -> dict[str, Any]:
    """Submit `count` messages over the Unix socket from `conns` threads, `per_conn` per session."""
    import smtplib
    import threading

    from tests.support.agent_env import UnixSMTP

    todo = list(range(count))
    lock = threading.Lock()
    errors: list[str] = []
    sessions = [0]

    def worker() -> None:
        while True:
            with lock:
                batch, todo[:] = todo[:per_conn], todo[per_conn:]
                sessions[0] += bool(batch)
            if not batch:
                return
            client = UnixSMTP(sock)
            client.ehlo("bench.localdomain")
            for i in batch:
                try:
                    client.sendmail("bench@example.com", ["alice@example.net"], socket_message(i))
                except smtplib.SMTPException as exc:
                    errors.append(str(exc))
            client.quit()

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "start": start,
        "end": time.monotonic(),
        "errors": errors[:3],
        "error_count": len(errors),
        "sessions": sessions[0],
    }


def child_push(port: int, ca_file: str, username: str, count: int, conns: int) -> dict[str, Any]:
    """aiosmtplib straight at the relay stand-in over `conns` persistent TLS connections."""
    import asyncio
    import ssl

    import aiosmtplib

    password = os.environ["BENCH_RELAY_PASSWORD"]
    ctx = ssl.create_default_context(cafile=ca_file)
    data = socket_message(0)

    async def one_connection(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=ctx, start_tls=True)
        await client.connect()
        await client.login(username, password)
        for _ in range(n):
            await client.sendmail("bench@example.com", ["alice@example.net"], data)
        await client.quit()

    async def run() -> None:
        share = [count // conns + (i < count % conns) for i in range(conns)]
        await asyncio.gather(*(one_connection(n) for n in share))

    start = time.monotonic()
    asyncio.run(run())
    return {"start": start, "end": time.monotonic()}


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} exited {proc.returncode}: {common.brief(proc.stderr)}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ----- the three measurements ----------------------------------------------------------------


def relay_capacity(count: int) -> list[common.Row]:
    from tests.support.relay_standin import RelayStandin

    with RelayStandin() as relay:
        env = dict(os.environ, BENCH_RELAY_PASSWORD=relay.password)
        res = run_child(["_push", str(relay.port), relay.ca_file, relay.username, str(count), "2"], env=env)
        got = len(relay.wait_for(count, timeout=30))
        rate = count / (res["end"] - res["start"])
        return [
            common.row(
                "relay stand-in capacity (aiosmtplib, 2 TLS connections)",
                rate,
                "msg/s",
                "",
                None,
                f"{got} messages, {relay.connections} connections",
            )
        ]


def paced_rate(count: int, rate: float, tmp: Path) -> list[common.Row]:
    from tests.support.agent_env import AgentEnv
    from tests.support.relay_standin import RelayStandin

    with RelayStandin() as relay:
        env = AgentEnv(tmp, relay, rate=rate)
        common.write_queue_files(env.queue_dir, count, common.message())
        env.start(timeout=60)
        try:
            msgs = relay.wait_for(count, timeout=count / rate * 1.5 + 30)
        except Exception as exc:
            msgs = relay.messages
            note = f"only {len(msgs)}/{count} arrived: {common.brief(str(exc))}"
        else:
            note = f"{len(msgs)} messages"
        finally:
            env.stop()
        times = sorted(relay.mail_from_times)
        got = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
        ok = None if got is None else abs(got - rate) <= RATE_TOLERANCE * rate
        return [
            common.row(
                f"delivered rate, {count}-message backlog, rate = {rate:g}",
                got,
                "msg/s",
                f"{rate:g} +- 2 %",
                ok,
                note,
            ),
            common.row(
                f"relay connections used, rate = {rate:g}",
                relay.connections,
                "",
                "few",
                None,
                f"{len(times)} MAIL FROMs",
            ),
        ]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lifted_once(
    count: int, tmp: Path, conns: int, per_conn: int, upstream: str, rate: float
) -> dict[str, Any]:
    """One run: submit `count` over the socket, wait until the upstream holds them all."""
    from tests.support.agent_env import AgentEnv
    from tests.support.relay_standin import RelayStandin

    tmp.mkdir(parents=True)
    relay: Any = SinkRelay(tmp) if upstream == "sink" else RelayStandin()
    with relay:
        env = AgentEnv(tmp, relay, rate=rate)
        env.start(timeout=60)
        try:
            assert env.proc is not None
            cpu0 = _cpu_seconds(env.proc.pid)
            res = run_child(["_submit", str(env.socket), str(count), str(conns), str(per_conn)])
            env.wait_queue_empty(timeout=120)
            res["daemon_cpu_ms"] = 1000 * (_cpu_seconds(env.proc.pid) - cpu0) / count
        finally:
            env.stop()
        if upstream == "sink":
            got = relay.finish()
            res.update(arrived=got["count"], last=got["last"], connections=got["connections"])
            res["upstream_cpu_ms"] = 1000 * got["cpu"] / max(got["count"], 1)
        else:
            msgs = relay.messages
            res.update(arrived=len(msgs), last=max((m.time for m in msgs), default=res["end"]))
            res.update(connections=relay.connections, upstream_cpu_ms=None)
    res["rate"] = res["arrived"] / (res["last"] - res["start"])
    res["submit_rate"] = count / (res["end"] - res["start"])
    return res


def lifted_rate(count: int, tmp: Path, conns: int, per_conn: int, runs: int = 3) -> list[common.Row]:
    """At rate = 1000 and with the limit lifted, `runs` times per variant (the same run differs
    by up to 2x here as the host's load changes): the median run, every run's rate in the note.

    The budget's figures: `conns` parallel socket sessions (an app server submitting 300 msg/s
    has many clients at once: PHP-FPM workers, cron jobs) into bench/tls_sink.py (in production
    the relay is another machine, so its CPU should not come out of the agent's two cores).
    At rate = 1000 the even limiter (one token every 1 ms) also costs each send its timer's
    wake-up; lifted, the figure is the pipeline's alone. For comparison: the aiosmtpd relay
    stand-in the tests use (~1.2 ms of CPU per message on the same two cores).
    """
    sink, standin = "lean TLS sink (bench/tls_sink.py)", "aiosmtpd stand-in"
    variants = [
        ("sink", sink, LIFTED_RATE, True),
        ("sink", sink, NO_LIMIT, True),
        ("standin", standin, LIFTED_RATE, False),
    ]
    rows = []
    for upstream, label, rate, budget in variants:
        results = [
            _lifted_once(count, tmp / f"{upstream}{rate:g}-{i}", conns, per_conn, upstream, rate)
            for i in range(runs)
        ]
        rows += _lifted_rows(results, count, f"{label}, {conns} sessions", rate, budget)
    return rows


def _rate_name(rate: float) -> str:
    return f"rate = {rate:g}" if rate < NO_LIMIT else "limit lifted"


def _lifted_rows(
    results: list[dict[str, Any]], count: int, label: str, rate: float, budget: bool
) -> list[common.Row]:
    results.sort(key=lambda r: r["rate"])
    mid = results[len(results) // 2]
    complete = all(r["arrived"] >= count for r in results)
    note = (
        f"runs {', '.join(format(r['rate'], '.0f') for r in results)} msg/s;"
        f" daemon CPU {mid['daemon_cpu_ms']:.2f} ms/msg"
        + (f", upstream {mid['upstream_cpu_ms']:.2f} ms/msg" if mid["upstream_cpu_ms"] else "")
        + f"; {mid['sessions']} socket sessions, {mid['error_count']} refused"
        + ("" if complete else f"; only {mid['arrived']}/{count} arrived")
    )
    ok = (mid["rate"] >= LIFTED_BUDGET and complete) if budget else None
    return [
        common.row(
            f"end to end, {_rate_name(rate)}, socket -> {label}",
            mid["rate"],
            "msg/s",
            ">= 300 msg/s" if budget else "",
            ok,
            note,
        ),
        common.row(
            f"submission alone (250 after DATA), {_rate_name(rate)}, {label}", mid["submit_rate"], "msg/s"
        ),
        common.row(f"relay connections used, {_rate_name(rate)}, {label}", mid["connections"], "", "few"),
    ]


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        return child_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=8, help="parallel socket sessions")
    ap.add_argument("--per-conn", type=int, default=50, help="messages per socket session")
    ap.add_argument("--quick", action="store_true", help="30 messages, for a smoke test")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    count = 30 if args.quick else args.count
    per_conn = 10 if args.quick else args.per_conn
    runs = 1 if args.quick else 3
    rows: list[common.Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-delivery.") as d:
        for name, job in (
            ("capacity", lambda: relay_capacity(count)),
            ("paced", lambda: paced_rate(count, args.rate, Path(d) / "paced")),
            (
                "lifted",
                lambda: lifted_rate(count, Path(d) / "lifted", args.conns, per_conn, runs),
            ),
        ):
            (Path(d) / name).mkdir(exist_ok=True)
            try:
                rows += job()
            except Exception as exc:  # one broken part must not hide the other figures
                rows.append(common.row(f"{name}: could not measure", None, note=common.brief(str(exc))))
    print(common.rows_table(rows))
    common.write_json(args.json, {"rows": rows})
    return 0


def child_main(args: list[str]) -> int:
    if args[0] == "_submit":
        result = child_submit(args[1], int(args[2]), int(args[3]), int(args[4]))
    elif args[0] == "_push":
        result = child_push(int(args[1]), args[2], args[3], int(args[4]), int(args[5]))
    else:
        raise SystemExit(f"unknown child mode {args[0]}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
