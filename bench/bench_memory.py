"""Daemon memory with big messages, each way in: VmHWM, and VmRSS 5 s after, per source tree.

For each way in (SMTP over the daemon's Unix socket; root `sendmail -t -i`, which writes the
maildrop; `sendmail -t -i` as nobody, which hands the message to the daemon's drop socket),
each load (one 25 MB message; five 20 MB messages at once) and each relay state (up: the
daemon relays to bench/tls_sink.py over STARTTLS + AUTH, so delivery's memory counts too;
down: a refused port, intake only), a fresh daemon is started and measured:
- idle: VmRSS 1 s after it answered 220, before any mail;
- VmHWM (peak RSS) once all is done (up: the queue is empty, every message relayed; down: every
  message is in queue/msg and the maildrop is empty), and VmRSS 5 s after that;
- each `sendmail` process's own peak RSS (ru_maxrss by os.wait4 in bench/wait4rss.py, whose
  own floor, ~6 MB, is printed) and the wall time from the first byte sent to done.
Messages: MIME with a base64 attachment (76-column lines), From a DKIM-signing domain.

With `--tree PATH` (repeatable) the same runs are made for that checkout too (see
bench/trees.py), interleaved: each round runs every scenario once per tree, alternating which
tree goes first, so the machine's drift falls on both. Each cell is the median over the rounds,
with the range when there are several. The budgets are checked on this checkout's
figures: VmHWM <= 100 MB for five 20 MB messages over the socket and through non-root
sendmail, <= 80 MB for one 25 MB message, VmRSS back within 10 MB of idle 5 s after, and the
sendmail process no larger than the message plus a few MB (taken as + 16 MB: the interpreter
alone is ~10 MB).

A round takes ~40 s per tree on a quiet 2-core machine and up to ~90 s on a busy one.

    .venv/bin/python bench/bench_memory.py [--tree /work/before-bench] [--rounds 2] [--quick]
        [--only socket,root,nobody] [--relay up,down] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import trees
from sink_relay import SinkRelay

WAYS = {
    "socket": "SMTP, Unix socket",
    "root": "root sendmail -t -i (maildrop)",
    "nobody": "sendmail -t -i as nobody (drop socket)",
}
LOADS = (("one 25 MB", 1, 25_000_000), ("five 20 MB", 5, 20_000_000))
QUICK_LOADS = (("one 2 MB", 1, 2_000_000), ("five 1 MB", 5, 1_000_000))
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
WAIT4 = ["/usr/bin/python3", "-S", "-E", str(common.BENCH / "wait4rss.py")]
SETTLE = 5.0  # seconds after done before VmRSS is read again (memory never given back shows)
IDLE_SETTLE = 1.0
DONE_TIMEOUT = 240.0
SENDMAIL_SLACK_MB = 16.0


def big_message(path: Path, size: int, tag: str) -> None:
    """A `size`-byte message (LF line ends, as apps write) with a base64 attachment."""
    head = (
        "From: Bench <bench@example.com>\n"
        "To: Alice <alice@example.net>\n"
        f"Subject: relay-agent memory bench {tag}\n"
        f"Message-ID: <mem-{tag}-{os.urandom(4).hex()}@example.com>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b0"\n'
        "\n--b0\nContent-Type: text/plain\n\nThe attachment.\n\n--b0\n"
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="blob.bin"\n\n'
    ).encode()
    tail = b"\n--b0--\n"
    room = size - len(head) - len(tail)
    lines = room // 77  # 76 base64 characters and LF
    raw = os.urandom(57 * lines)
    body = b"\n".join(base64.b64encode(raw[i : i + 57]) for i in range(0, len(raw), 57)) + b"\n"
    with open(path, "wb") as fh:
        fh.write(head + body + b"x" * (room - len(body) - 1) + b"\n" + tail)
    path.chmod(0o644)


class Big:
    """The message files of one load, with CRLF copies for SMTP."""

    def __init__(self, tmp: Path, name: str, count: int, size: int) -> None:
        self.name, self.count, self.size = name, count, size
        self.files = [tmp / f"msg-{size}-{i}.eml" for i in range(count)]
        for i, f in enumerate(self.files):
            if not f.exists():
                big_message(f, size, f"{size}-{i}")


# ----- the ways in ------------------------------------------------------------------------------


def smtp_send(sock: str, path: Path, out: dict[str, Any]) -> None:
    class Client(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(sock)
            return s

    data = common.crlf(path.read_bytes())  # smtplib sends bytes as they are
    try:
        client = Client(timeout=DONE_TIMEOUT)
        client.connect("localhost", 0)
        client.ehlo("bench.localdomain")
        client.sendmail("bench@example.com", ["alice@example.net"], data)
        client.quit()
        out["rc"] = 0
    except (OSError, smtplib.SMTPException) as exc:
        out.update(rc=1, stderr=str(exc)[:300])
    out["end"] = time.monotonic()


def sendmail_run(cmd: list[str], path: Path, env: dict[str, str], out: dict[str, Any]) -> None:
    proc = subprocess.run([*WAIT4, str(path), *cmd, "-t", "-i"], env=env, capture_output=True, text=True)
    try:
        out.update(eval_json(proc.stdout))
    except ValueError:
        out.update(rc=proc.returncode, stderr=common.brief(proc.stderr))
    out["end"] = time.monotonic()


def eval_json(text: str) -> dict[str, Any]:
    import json

    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise ValueError("no JSON line")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def submit(way: str, env: Any, stub: Path, big: Big) -> list[dict[str, Any]]:
    """All of the load's messages at once, one thread each; what each submitter reported."""
    outs: list[dict[str, Any]] = [{} for _ in big.files]
    threads = []
    for path, out in zip(big.files, outs, strict=True):
        if way == "socket":
            t = threading.Thread(target=smtp_send, args=(str(env.socket), path, out))
        else:
            cmd = [*AS_NOBODY, str(stub)] if way == "nobody" else [str(stub)]
            t = threading.Thread(target=sendmail_run, args=(cmd, path, env.env, out))
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs


# ----- one measurement --------------------------------------------------------------------------


def _files(d: Path) -> int:
    try:
        return sum(1 for n in os.listdir(d) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def wait_done(env: Any, count: int, relay_up: bool) -> bool:
    """Up: nothing left in queue/msg or the maildrop. Down: `count` in queue/msg, none in the maildrop."""
    deadline = time.monotonic() + DONE_TIMEOUT
    while time.monotonic() < deadline:
        queued, dropped = _files(env.queue_dir / "msg"), _files(env.maildrop)
        if dropped == 0 and queued == (0 if relay_up else count):
            return True
        time.sleep(0.02)
    return False


def measure_once(tree: trees.Tree, way: str, big: Big, relay_up: bool, tmp: Path) -> threading.Thread:
    """Start a fresh daemon, load it, wait until done and read its peak; the rest (VmRSS SETTLE
    seconds later, stopping the daemon and the sink) runs on the returned thread, so that the
    next measurement need not wait: an idle daemon's RSS does not depend on what else runs."""
    from tests.support.agent_env import AgentEnv

    tmp.mkdir(parents=True)
    tmp.chmod(0o755)  # nobody reaches the socket and the config's digest through it
    (tmp / "agent").mkdir()
    stub = tree.stub(tmp)
    relay: Any = SinkRelay(tmp) if relay_up else trees.DownRelay()
    res: dict[str, Any] = {"ok": False, "note": "not measured"}
    try:
        env = AgentEnv(tmp / "agent", relay)
        proc = tree.start(env)
    except BaseException:
        relay.__exit__(None, None, None)
        raise
    try:
        time.sleep(IDLE_SETTLE)
        idle = trees.proc_mem(proc.pid)["VmRSS"]
        t0 = time.monotonic()
        outs = submit(way, env, stub, big)
        done = wait_done(env, sum(o.get("rc") == 0 for o in outs), relay_up)
        t_done = time.monotonic()
        at_done = trees.proc_mem(proc.pid)
    except BaseException:
        env.stop(timeout=30)
        relay.__exit__(None, None, None)
        raise

    def finish() -> None:
        try:
            time.sleep(max(0.0, t_done + SETTLE - time.monotonic()))
            later = trees.proc_mem(proc.pid)
            alive = proc.poll() is None
        finally:
            env.stop(timeout=30)
            sink = relay.finish()
            relay.__exit__(None, None, None)
        failed = [o for o in outs if o.get("rc") != 0]
        rss = [o["maxrss_kib"] * 1024 / 1e6 for o in outs if "maxrss_kib" in o]
        note = "" if done else "NOT DONE in time; "
        note += f"{len(failed)} submitter(s) failed: {failed[0].get('stderr', '')}; " if failed else ""
        note += "" if alive else "daemon died; "
        if relay_up and sink["count"] != big.count:
            note += f"sink got {sink['count']}/{big.count}; "
        res.update(
            idle=idle,
            hwm=max(at_done["VmHWM"], later["VmHWM"]),
            rss_after=later["VmRSS"],
            sendmail_rss=max(rss) if rss else None,
            seconds=t_done - t0,
            ok=done and not failed and alive,
            note=note.rstrip("; "),
        )

    thread = threading.Thread(target=finish)
    thread.result = res  # type: ignore[attr-defined]
    thread.start()
    return thread


# ----- the whole run ----------------------------------------------------------------------------


def scenarios(
    ways: list[str], relays: list[bool], loads: tuple[tuple[str, int, int], ...]
) -> list[tuple[str, int, bool]]:
    return [(w, li, up) for up in relays for w in ways for li in range(len(loads))]


def run(args: argparse.Namespace, tmp: Path) -> tuple[str, list[common.Row], dict[str, Any]]:
    tree_list = trees.trees(args.tree)
    loads = QUICK_LOADS if args.quick else LOADS
    bigs = [Big(tmp, *load) for load in loads]
    ways = [w for w in args.only.split(",") if w]
    relays = [r == "up" for r in args.relay.split(",") if r]
    todo = scenarios(ways, relays, loads)
    samples: dict[tuple[str, str, int, bool], list[dict[str, Any]]] = {}
    pending: list[tuple[str, threading.Thread]] = []
    n = 0
    for r in range(args.rounds):
        for s_i, (way, li, up) in enumerate(todo):
            order = tree_list if (r + s_i) % 2 == 0 else tree_list[::-1]
            for tree in order:
                n += 1
                what = f"round {r + 1} {tree.label} {way} {loads[li][0]} relay {'up' if up else 'down'}"
                try:
                    thread = measure_once(tree, way, bigs[li], up, tmp / f"run{n}")
                    res = thread.result  # type: ignore[attr-defined]
                    pending.append((what, thread))
                except Exception as exc:  # one broken run must not hide the others
                    res = {"ok": False, "note": f"could not run: {common.brief(str(exc))}"}
                samples.setdefault((tree.label, way, li, up), []).append(res)
    for what, thread in pending:
        thread.join()
        res = thread.result  # type: ignore[attr-defined]
        print(f"# {what}: { {k: v for k, v in res.items() if k != 'note'} } {res['note']}", file=sys.stderr)
    text = render(tree_list, todo, loads, samples)
    rows = budget_rows(tree_list[0].label, todo, loads, samples)
    return text, rows, {"samples": {"|".join(map(str, k)): v for k, v in samples.items()}}


def cell(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "n/a"
    med = statistics.median(xs)
    return f"{med:.0f}" + (
        f" ({min(xs):.0f}-{max(xs):.0f})" if len(xs) > 1 and max(xs) - min(xs) >= 1 else ""
    )


def render(
    tree_list: list[trees.Tree],
    todo: list[tuple[str, int, bool]],
    loads: tuple[tuple[str, int, int], ...],
    samples: dict[tuple[str, str, int, bool], list[dict[str, Any]]],
) -> str:
    labels = [t.label for t in tree_list]
    metrics = (
        ("hwm", "VmHWM MB"),
        ("rss_after", "VmRSS 5 s after MB"),
        ("idle", "idle MB"),
        ("sendmail_rss", "sendmail peak MB"),
        ("seconds", "s to done"),
    )
    headers = ["way in", "load", "relay"] + [f"{m} {lab}" for _, m in metrics for lab in labels] + ["note"]
    out = []
    for way, li, up in todo:
        line: list[Any] = [WAYS[way], loads[li][0], "up (tls_sink)" if up else "down"]
        notes = []
        for key, _ in metrics:
            for lab in labels:
                runs = complete(samples.get((lab, way, li, up), []))
                if key == "sendmail_rss" and way == "socket":
                    line.append("-")
                    continue
                vals = [s.get(key) for s in runs]
                line.append(cell(vals) if key != "seconds" else _secs(vals))
        for lab in labels:
            bad = [s["note"] for s in samples.get((lab, way, li, up), []) if s.get("note")]
            if bad:
                notes.append(f"{lab}: {len(bad)} run(s) left out: {bad[0]}")
        out.append([*line, "; ".join(notes)])
    rounds = max((len(v) for v in samples.values()), default=0)
    return (
        f"Median of {rounds} round(s) (runs in which a submitter failed are left out), (min-max) when"
        " they differ by 1 MB or more; MB = 10^6 bytes. "
        f"sendmail's peak RSS is ru_maxrss (os.wait4), floor ~6 MB (the helper's own).\n\n"
        + common.table(headers, out)
    )


def complete(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs in which every message got through: a run with failed submitters measured less."""
    return [s for s in runs if s.get("ok")]


def _secs(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    return f"{statistics.median(xs):.1f}" if xs else "n/a"


def budget_rows(
    label: str,
    todo: list[tuple[str, int, bool]],
    loads: tuple[tuple[str, int, int], ...],
    samples: dict[tuple[str, str, int, bool], list[dict[str, Any]]],
) -> list[common.Row]:
    rows = []
    for way, li, up in todo:
        runs = complete(samples.get((label, way, li, up), []))
        if not runs:
            what = f"{WAYS[way]}, {loads[li][0]}, relay {'up' if up else 'down'}: no complete run"
            rows.append(common.row(what, None, "", "", False, "see the table's note"))
            continue
        name, count, size = loads[li]
        where = f"{WAYS[way]}, {name}, relay {'up' if up else 'down'}"
        hwm = statistics.median(s["hwm"] for s in runs)
        limit = 80.0 if count == 1 else 100.0
        if not (count > 1 and way == "root"):  # budgeted: five over the socket and non-root
            rows.append(common.row(f"daemon VmHWM, {where}", hwm, "MB", f"<= {limit:g} MB", hwm <= limit))
        back = statistics.median(s["rss_after"] - s["idle"] for s in runs)
        rows.append(
            common.row(f"daemon VmRSS 5 s after minus idle, {where}", back, "MB", "<= 10 MB", back <= 10)
        )
        sm = [s["sendmail_rss"] for s in runs if s.get("sendmail_rss") is not None]
        if sm and way != "socket":
            peak = statistics.median(sm)
            cap = size / 1e6 + SENDMAIL_SLACK_MB
            rows.append(common.row(f"sendmail peak RSS, {where}", peak, "MB", f"<= {cap:g} MB", peak <= cap))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure beside this one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=",".join(WAYS), help="ways in: socket,root,nobody")
    ap.add_argument("--relay", default="up,down", help="relay states: up,down")
    ap.add_argument("--quick", action="store_true", help="1-2 MB messages, one round: a smoke test")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 1
    with tempfile.TemporaryDirectory(prefix="bench-memory.") as d:
        Path(d).chmod(0o755)
        text, rows, raw = run(args, Path(d))
    print(text)
    print()
    print(common.rows_table(rows))
    common.write_json(args.json, {"rows": rows, **raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
