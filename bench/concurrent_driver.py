"""Keep N submitters busy, each running CMD (e.g. `sendmail -t -i`) M times with a file on stdin;
then wait until the spool directories are empty. Prints one JSON line.

Stdlib only and standalone, so it runs the same way inside a peer's namespace (bench/peers.sh run)
as outside. Times are time.monotonic(), comparable with bench/tls_sink.py's across processes.

    python3 bench/concurrent_driver.py --procs 8 --per 250 --warmup 16 --input msg.eml \\
        --spool DIR[,DIR...] [--cpu-of all|PID,PID] -- CMD [ARG...]

- warm-up: `warmup` runs, `procs` at a time, then the spool drains (untimed);
- timed: `procs` threads, each running CMD `per` times back to back; "accepted_end" is when the
  last one exited; "drained" when every spool directory (searched recursively, dot files
  skipped) was empty afterwards;
- CPU seconds over the timed part: "submitters" (the children this process waited for, and
  theirs), and "others": the processes in --cpu-of (all: every other process in /proc, which
  inside a peer's PID namespace is the peer's daemons and the sink).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def spool_files(dirs: list[str]) -> int:
    n = 0
    for top in dirs:
        for _, _, files in os.walk(top):
            n += sum(1 for f in files if not f.startswith("."))
    return n


def proc_cpu(pids: list[int] | None) -> float:
    """CPU seconds (own + reaped children) of `pids`, or of every process but this one."""
    if pids is None:
        me = os.getpid()
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / TICK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Submitters:
    def __init__(self, cmd: list[str], path: str) -> None:
        self.cmd, self.path = cmd, path
        self.lock = threading.Lock()
        self.failures = 0
        self.first_error = ""
        self.ends: list[float] = []

    def one(self) -> None:
        with open(self.path, "rb") as stdin:
            proc = subprocess.run(self.cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            with self.lock:
                self.failures += 1
                if not self.first_error:
                    self.first_error = (
                        f"exit {proc.returncode}: " + proc.stderr.decode(errors="replace")[:300]
                    )

    def worker(self, runs: int) -> None:
        for _ in range(runs):
            self.one()
        with self.lock:
            self.ends.append(time.monotonic())

    def run(self, procs: int, per: int) -> None:
        threads = [threading.Thread(target=self.worker, args=(per,)) for _ in range(procs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def wait_empty(dirs: list[str], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spool_files(dirs) == 0:
            return time.monotonic()
        time.sleep(0.01)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--per", type=int, default=250)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--input", required=True)
    ap.add_argument(
        "--spool", required=True, help="comma-separated directories that empty when all is relayed"
    )
    ap.add_argument("--cpu-of", default="", help="'all' or comma-separated pids")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    dirs = [d for d in args.spool.split(",") if d]
    pids = None if args.cpu_of == "all" else [int(p) for p in args.cpu_of.split(",") if p]
    warm = Submitters(args.cmd, args.input)
    warm.run(min(args.procs, args.warmup), -(-args.warmup // args.procs) if args.warmup else 0)
    warm_drained = wait_empty(dirs, args.timeout)
    subs = Submitters(args.cmd, args.input)
    cpu0, others0 = children_cpu(), proc_cpu(pids)
    start = time.monotonic()
    subs.run(args.procs, args.per)
    accepted_end = time.monotonic()
    drained = wait_empty(dirs, args.timeout)
    cpu1, others1 = children_cpu(), proc_cpu(pids)
    json.dump(
        {
            "count": args.procs * args.per,
            "warmup": args.warmup,
            "warmup_failures": warm.failures,
            "warmup_drained": warm_drained is not None,
            "start": start,
            "accepted_end": accepted_end,
            "submitter_ends": sorted(subs.ends),
            "drained": drained,
            "failures": subs.failures,
            "first_error": subs.first_error or warm.first_error,
            "submitters_cpu": cpu1 - cpu0,
            "others_cpu": others1 - others0,
            "left_in_spool": spool_files(dirs),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
