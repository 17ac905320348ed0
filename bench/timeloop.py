"""Spawn a command N times with a file on stdin; print per-run wall time and peak RSS as JSON.

Stdlib only and standalone, so it runs the same way inside a peer's namespace
(bench/peers.sh run) as outside. Peak RSS comes from separate runs under /usr/bin/time:
a child forked from this Python process starts with Python's own RSS as its high-water
mark (exec keeps the old mm's hiwater in signal->maxrss), so os.wait4 here would report
>= 14 MiB even for /bin/true. time(1) is small, and its wait4 covers the grandchildren the
command waited for (Postfix's sendmail runs postdrop).

    python bench/timeloop.py --runs 50 --warmup 3 [--gap 0.1] --input msg.eml -- sendmail -t -i
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TIME = "/usr/bin/time"


def one(cmd: list[str], input_path: str) -> tuple[int, int]:
    """(elapsed ns, exit status) of one run."""
    with open(input_path, "rb") as stdin:
        t0 = time.perf_counter_ns()
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter_ns() - t0
    if proc.returncode != 0:
        sys.stderr.write(
            f"timeloop: {cmd[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:300]}\n"
        )
    return elapsed, proc.returncode


def peak_rss_kib(cmd: list[str], input_path: str) -> int | None:
    if not os.path.exists(TIME):
        return None
    fd, out = tempfile.mkstemp(prefix="timeloop.")
    os.close(fd)
    try:
        with open(input_path, "rb") as stdin:
            subprocess.run([TIME, "-f", "%M", "-o", out, *cmd], stdin=stdin, capture_output=True)
        with open(out) as fh:
            return int(fh.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.unlink(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rss-runs", type=int, default=5)
    ap.add_argument("--input", required=True)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds of rest before each timed run")
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    for _ in range(args.warmup):
        one(args.cmd, args.input)
    times, failures = [], 0
    for _ in range(args.runs):
        time.sleep(args.gap)  # a caller at an app's pace finds the daemon idle, not catching up
        ns, rc = one(args.cmd, args.input)
        times.append(ns)
        failures += rc != 0
    rss = [k for k in (peak_rss_kib(args.cmd, args.input) for _ in range(args.rss_runs)) if k is not None]
    json.dump({"cmd": args.cmd, "ns": times, "rss_kib": rss, "failures": failures}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
