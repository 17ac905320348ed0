"""Run every benchmark and write bench/results/latest.md: one markdown page with every figure.

    .venv/bin/python bench/run_all.py [--quick] [--only sendmail,delivery,queue,dkim,memory,concurrent]
        [--out PATH] [--tree DIR ...] [--no-peers]

`./dev bench` calls this. The peers are fetched first (bench/peers.sh fetch, root only); a peer
that cannot run says why in its row. Each script also runs on its own (see their --help).
`--tree DIR` (repeatable) and `--no-peers` go to each script whose --help offers them: with
`--tree` those measure that checkout beside this one, interleaved (see bench/trees.py), e.g.

    ./dev bench --only sendmail,delivery --tree /tmp/before --out bench/results/before-after.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import trees

SCRIPTS = {
    "sendmail": "bench_sendmail.py",
    "delivery": "bench_delivery.py",
    "queue": "bench_queue.py",
    "dkim": "bench_dkim.py",  # written by the DKIM engineer; included when present
    "memory": "bench_memory.py",
    "concurrent": "bench_concurrent.py",
}
TITLES = {
    "sendmail": "sendmail -t -i latency, relay-agent and peers (one run)",
    "delivery": "Delivery rate (TLS upstreams: bench/tls_sink.py, the aiosmtpd stand-in; not smtp-sink)",
    "queue": "Daemon with a big queue",
    "dkim": "DKIM signing",
    "memory": "Daemon memory with 20-25 MB messages, each way in (relay up: bench/tls_sink.py; down)",
    "concurrent": "8 concurrent sendmail -t -i x 250 beside Postfix (upstream: bench/tls_sink.py, TLS, AUTH)",
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def fetch_peers() -> str:
    if os.geteuid() != 0:
        return "peers not fetched: needs root (namespaces)"
    proc = subprocess.run(
        [str(common.BENCH / "peers.sh"), "fetch"], capture_output=True, text=True, timeout=600
    )
    return (proc.stdout or proc.stderr).strip().splitlines()[-1] if (proc.stdout or proc.stderr) else ""


def run_one(
    name: str, quick: bool, tmp: Path, tree: list[str], no_peers: bool
) -> tuple[str, dict[str, Any] | None]:
    """(the script's printed tables, its JSON results or None)."""
    script = common.BENCH / SCRIPTS[name]
    out = tmp / f"{name}.json"
    # bench_dkim.py is another engineer's: pass only the flags its --help mentions
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    cmd = [sys.executable, str(script)]
    cmd += ["--json", str(out)] if "--json" in usage else []
    cmd += ["--quick"] if quick and "--quick" in usage else []
    cmd += ["--runs", "20"] if quick and "--quick" not in usage and "--runs" in usage else []
    cmd += [a for d in tree for a in ("--tree", d)] if "--tree" in usage else []
    cmd += ["--no-peers"] if no_peers and "--no-peers" in usage else []
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        return f"`{SCRIPTS[name]}` failed (exit {proc.returncode}): {common.brief(proc.stderr)}", None
    return proc.stdout.strip(), (json.loads(out.read_text()) if out.exists() else None)


def budget_summary(results: dict[str, dict[str, Any] | None]) -> str:
    rows = [r for res in results.values() if res for r in res.get("rows", []) if r.get("budget")]
    return common.rows_table(rows) if rows else "(no budgeted figure was measured)"


def load() -> str:
    """The load averages (1, 5, 15 min): the intervals widen when other work shares the cores."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def render(
    sections: dict[str, str],
    results: dict[str, dict[str, Any] | None],
    notes: dict[str, str],
    quick: bool,
) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    parts = [
        "# relay-agent benchmarks",
        "",
        f"- date: {now} (started {notes['start']})",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min): {notes['load_start']} at the start, {load()} at the end",
        f"- peers: {notes['peers'] or 'not fetched'}",
        f"- trees: {notes['trees']}",
        "- mode: " + ("QUICK (smoke test sizes, not the budget figures)" if quick else "full"),
        "- figures from different runs differ by up to 35 % on a busy machine: compare within one page",
        "",
        "## Budgets",
        "",
        budget_summary(results),
    ]
    for name, text in sections.items():
        parts += ["", f"## {TITLES[name]}", "", text]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SCRIPTS))
    ap.add_argument("--out", default=str(common.BENCH / "results" / "latest.md"))
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure beside this one")
    ap.add_argument("--no-peers", action="store_true", help="relay-agent only, where a script can")
    args = ap.parse_args(argv)
    wanted = [n for n in args.only.split(",") if n]
    unknown = [n for n in wanted if n not in SCRIPTS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    notes = {
        "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_start": load(),
        # each script labels the trees the same way (bench/trees.py); a bad path stops here, early
        "trees": ", ".join(f'"{t.label}" {t.path}' for t in trees.trees(args.tree)),
    }
    wants_peers = {"sendmail", "concurrent"} & set(wanted)
    notes["peers"] = (
        "not wanted (--no-peers)" if args.no_peers else fetch_peers() if wants_peers else "not needed"
    )
    sections: dict[str, str] = {}
    results: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-all.") as d:
        for name in wanted:
            if not (common.BENCH / SCRIPTS[name]).exists():
                sections[name] = f"`{SCRIPTS[name]}` is not there yet: not measured"
                continue
            sections[name], results[name] = run_one(name, args.quick, Path(d), args.tree, args.no_peers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(sections, results, notes, args.quick))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
