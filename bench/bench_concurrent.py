"""8 concurrent `sendmail -t -i` submitters x 250 messages (2 KB): relay-agent beside Postfix, one run.

Each block: a fresh daemon and upstream, 16 untimed warm-up messages (then the spool drains), then
bench/concurrent_driver.py keeps 8 submitters busy, each sending 250 messages back to back.
- accepted/s: 2,000 / (last submitter's exit - start): what the callers see;
- to sink s: start -> the last message's arrival at the sink (its own clock, time.monotonic);
- CPU ms/msg over the timed part: the submitters (sendmail and what it ran, e.g. postdrop), and the
  daemon(s) with the sink (relay-agent: the daemon's and the sink's own /proc figures; Postfix:
  every other process in its PID namespace, its daemons and the sink), and of that the sink's own
  (its CPU from its first message on, per message, the warm-up's included).
relay-agent: this checkout (and each --tree, see bench/trees.py) with its installed-style stub,
the limit lifted (`rate` 1e9: the pipeline, not the limiter), relaying over STARTTLS + AUTH to
bench/tls_sink.py. Postfix: in its namespace (bench/peers.sh), relaying to the same sink over
STARTTLS + AUTH. Both as root (relay-agent: the maildrop + pickup; Postfix: postdrop) and as
nobody (relay-agent: the drop socket; Postfix: setgid postdrop), setpriv included.

Blocks take turns in ROUNDS rounds (the order rotates each round), so drift on this busy 2-core
machine falls on every side; each cell is the median of the rounds' figures, and every ratio
is paired by round (the two blocks of a round ran close together; the load here can change
several-fold between rounds): the median of the rounds' ratios with a 95 % bootstrap interval
(common.ratio_interval), and the unpaired ratio of medians with its own beside it.

    .venv/bin/python bench/bench_concurrent.py [--tree /work/before-bench] [--rounds 3]
        [--procs 8] [--per 250] [--no-peers] [--quick] [--json OUT]
    .venv/bin/python bench/bench_concurrent.py --profile OUT_DIR [--tree PATH]
        (a root and a nobody block per tree, the daemon under cProfile: where its time goes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import trees
from sink_relay import SinkRelay

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
DRIVER = ["/usr/bin/python3", str(common.BENCH / "concurrent_driver.py")]
NO_LIMIT = 1e9
POSTFIX_SPOOL = ",".join(
    f"/var/spool/postfix/{d}" for d in ("maildrop", "incoming", "active", "deferred", "hold")
)
WARMUP = 16


def driver_args(msg: Path, procs: int, per: int, spool: str, cpu_of: str) -> list[str]:
    return [
        *DRIVER,
        "--procs",
        str(procs),
        "--per",
        str(per),
        "--warmup",
        str(WARMUP),
        "--input",
        str(msg),
        "--spool",
        spool,
        "--cpu-of",
        cpu_of,
        "--",
    ]


def last_json(text: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError("no JSON result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def figures(drv: dict[str, Any], sink: dict[str, Any]) -> dict[str, Any]:
    n = drv["count"]
    expected = n + drv["warmup"]
    note = []
    if drv["failures"] or drv["warmup_failures"]:
        note.append(f"{drv['failures'] + drv['warmup_failures']} failed: {drv['first_error'][:200]}")
    if sink.get("count") != expected:
        note.append(f"sink got {sink.get('count')}/{expected}")
    if drv["drained"] is None:
        note.append(f"{drv['left_in_spool']} left in the spool")
    return {
        "accepted_per_s": n / (drv["accepted_end"] - drv["start"]),
        "to_sink_s": (sink["last"] - drv["start"]) if sink.get("last") else None,
        "submit_cpu_ms": 1000 * drv["submitters_cpu"] / n,
        "daemon_cpu_ms": 1000 * drv["others_cpu"] / n,
        # from its first message on, the warm-up's included: its share of the column before
        "sink_cpu_ms": 1000 * sink.get("cpu", 0.0) / expected,
        "ok": not note,
        "note": "; ".join(note),
    }


# ----- the blocks --------------------------------------------------------------------------------


def agent_block(
    tree: trees.Tree, as_nobody: bool, msg: Path, tmp: Path, procs: int, per: int, profile: str = ""
) -> dict[str, Any]:
    from tests.support.agent_env import AgentEnv

    tmp.mkdir(parents=True)
    tmp.chmod(0o755)
    (tmp / "agent").mkdir()
    stub = tree.stub(tmp)
    with SinkRelay(tmp) as relay:
        env = AgentEnv(tmp / "agent", relay, rate=NO_LIMIT)
        proc = start_profiled(tree, env, profile) if profile else tree.start(env)
        try:
            spool = f"{env.queue_dir / 'msg'},{env.maildrop}"
            cmd = [*(AS_NOBODY if as_nobody else []), str(stub), "-t", "-i"]
            run = subprocess.run(
                [*driver_args(msg, procs, per, spool, f"{proc.pid},{relay.proc.pid}"), *cmd],
                env=env.env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if run.returncode != 0:
                raise RuntimeError(f"driver exited {run.returncode}: {common.brief(run.stderr)}")
            drv = last_json(run.stdout)
        finally:
            env.stop(timeout=30)
        sink = relay.finish()
    return figures(drv, sink)


def start_profiled(tree: trees.Tree, env: Any, out: str) -> subprocess.Popen[bytes]:
    """The daemon under cProfile (its event loop's thread), writing its stats to `out` on exit."""
    code = f"import cProfile; cProfile.run({trees.DAEMON_CODE!r}, {out!r})"
    return tree.start(env, code=code)


def postfix_block(as_nobody: bool, msg: Path, tls: Path, procs: int, per: int) -> dict[str, Any]:
    from bench_sendmail import peer_env

    sendmail = [*(AS_NOBODY if as_nobody else []), "/usr/sbin/sendmail", "-t", "-i"]
    out = tls / "sink-postfix.out"
    if out.exists():
        out.unlink()
    run = subprocess.run(
        [
            str(common.BENCH / "peers.sh"),
            "run",
            "postfix",
            *driver_args(msg, procs, per, POSTFIX_SPOOL, "all"),
            *sendmail,
        ],
        env=peer_env(tls),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if run.returncode != 0:
        raise RuntimeError(f"peers.sh exited {run.returncode}: {common.brief(run.stderr)}")
    drv = last_json(run.stdout)
    sink = last_json(out.read_text())
    return figures(drv, sink)


# ----- the run -----------------------------------------------------------------------------------


def block_names(tree_list: list[trees.Tree], postfix: bool) -> list[tuple[str, str, bool]]:
    """(row name, tree label or "postfix", as nobody)."""
    out = []
    for nobody in (False, True):
        who = "as nobody" if nobody else "as root"
        for t in tree_list:
            out.append((f"relay-agent {t.label}, {who}", t.label, nobody))
        if postfix:
            out.append((f"Postfix, {who}", "postfix", nobody))
    return out


def run(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], list[common.Row]]:
    from bench_sendmail import peer_check, peer_tls

    tree_list = trees.trees(args.tree)
    by_label = {t.label: t for t in tree_list}
    msg = tmp / "message.eml"
    msg.write_bytes(common.message())
    msg.chmod(0o644)
    tls = peer_tls(tmp)
    why = "not wanted" if args.no_peers else peer_check("postfix", tls)
    blocks = block_names(tree_list, why == "ok")
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in blocks}
    n = 0
    for r in range(args.rounds):
        k = r % len(blocks)
        for name, label, nobody in blocks[k:] + blocks[:k]:
            n += 1
            try:
                if label == "postfix":
                    res = postfix_block(nobody, msg, tls, args.procs, args.per)
                else:
                    res = agent_block(by_label[label], nobody, msg, tmp / f"b{n}", args.procs, args.per)
            except Exception as exc:  # one broken block must not hide the others
                res = {"ok": False, "note": f"could not run: {common.brief(str(exc))}"}
            samples[name].append(res)
            print(f"# round {r + 1} {name}: {res}", file=sys.stderr, flush=True)
    results = [summary(name, samples[name]) for name, _, _ in blocks]
    if why != "ok":
        results.append({"name": "Postfix", "note": f"not measured: {why}", "rates": []})
    return results, ratio_rows(tree_list, results)


def summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of a block's rounds; "by_round" keeps each round's figures (None: it failed)."""
    good = [r for r in runs if "accepted_per_s" in r and r.get("ok")]

    def med(key: str) -> float | None:
        xs = [r[key] for r in good if r.get(key) is not None]
        return common.median(xs) if xs else None

    notes = sorted({r["note"] for r in runs if r.get("note")})
    return {
        "name": name,
        "accepted_per_s": med("accepted_per_s"),
        "rates": [r["accepted_per_s"] for r in good],
        "to_sink_s": med("to_sink_s"),
        "submit_cpu_ms": med("submit_cpu_ms"),
        "daemon_cpu_ms": med("daemon_cpu_ms"),
        "sink_cpu_ms": med("sink_cpu_ms"),
        "runs": len(good),
        "by_round": [r if r in good else None for r in runs],
        "note": "; ".join(notes),
    }


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, str, float] | None:
    """a / b for `key`, paired by round: the two blocks of a round ran minutes apart at most, while
    the machine's load can change several-fold between rounds. (median of the rounds' ratios, a note
    with its 95 % bootstrap interval and the unpaired ratio of medians, the interval's upper end)."""
    pairs = [
        (x[key], y[key])
        for x, y in zip(a.get("by_round", []), b.get("by_round", []), strict=False)
        if x and y and x.get(key) and y.get(key)
    ]
    if not pairs:
        return None
    paired = [x / y for x, y in pairs]
    low, high = common.ratio_interval(paired, [1.0] * len(paired))
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    u_low, u_high = common.ratio_interval(xs, ys)
    note = (
        f"paired by round: {', '.join(f'{r:.2f}' for r in paired)}; 95 % interval {low:.2f}-{high:.2f};"
        f" unpaired (median / median) {common.median(xs) / common.median(ys):.2f},"
        f" interval {u_low:.2f}-{u_high:.2f} (bootstrap)"
    )
    return common.median(paired), note, high


def ratio_rows(tree_list: list[trees.Tree], results: list[dict[str, Any]]) -> list[common.Row]:
    by = {r["name"]: r for r in results}
    rows = []
    new = tree_list[0].label
    for who in ("as root", "as nobody"):
        pf = by.get(f"Postfix, {who}", {})
        for t in tree_list:
            ours = by.get(f"relay-agent {t.label}, {who}", {})
            got = _ratio(ours, pf, "accepted_per_s")
            if got:
                rows.append(
                    common.row(
                        f"accepted/s, relay-agent {t.label} / Postfix, {who}", got[0], "x", "", None, got[1]
                    )
                )
            got = _ratio(ours, pf, "to_sink_s")
            if got:
                rows.append(
                    common.row(
                        f"time to sink, relay-agent {t.label} / Postfix, {who}", got[0], "x", "", None, got[1]
                    )
                )
        for t in tree_list[1:]:
            a, b = by.get(f"relay-agent {new}, {who}", {}), by.get(f"relay-agent {t.label}, {who}", {})
            got = _ratio(a, b, "accepted_per_s")
            if got:  # worse only if even the interval's top is below 1: the rounds' noise is wide here
                what = f"accepted/s, relay-agent {new} / {t.label}, {who}"
                rows.append(common.row(what, got[0], "x", "no worse than before", got[2] >= 1.0, got[1]))
    return rows


def results_table(results: list[dict[str, Any]], procs: int, per: int) -> str:
    return (
        f"{procs} submitters x {per} messages of 2 KB each; medians of the rounds"
        " (every round's rate in the note).\n\n"
        + common.table(
            [
                "submitters",
                "accepted/s",
                "to sink s",
                "sendmail CPU ms/msg",
                "daemon+sink CPU ms/msg",
                "of which sink",
                "rounds",
                "note",
            ],
            [
                [
                    r["name"],
                    r.get("accepted_per_s"),
                    r.get("to_sink_s"),
                    r.get("submit_cpu_ms"),
                    r.get("daemon_cpu_ms"),
                    r.get("sink_cpu_ms"),
                    r.get("runs", 0),
                    "; ".join(
                        x
                        for x in (
                            ", ".join(f"{v:.0f}" for v in r["rates"]) + " msg/s" if r["rates"] else "",
                            r["note"],
                        )
                        if x
                    ),
                ]
                for r in results
            ],
        )
    )


# ----- profile -----------------------------------------------------------------------------------


def profile(args: argparse.Namespace, tmp: Path) -> None:
    import pstats

    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    msg = tmp / "message.eml"
    msg.write_bytes(common.message())
    msg.chmod(0o644)
    for t in trees.trees(args.tree):
        for nobody in (False, True):
            who = "nobody" if nobody else "root"
            stats = out_dir / f"daemon-{t.label}-{who}.prof"
            res = agent_block(t, nobody, msg, tmp / f"p-{t.label}-{who}", args.procs, args.per, str(stats))
            print(
                f"## relay-agent {t.label} as {who} under cProfile: {res['accepted_per_s']:.0f} accepted/s, "
                f"daemon+sink {res['daemon_cpu_ms']:.2f} ms/msg {res['note']}\n"
            )
            if not stats.exists():
                print("(no profile written)\n")
                continue
            p = pstats.Stats(str(stats))
            p.sort_stats("tottime").print_stats(25)
            p.sort_stats("cumulative").print_stats(40)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure beside this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--per", type=int, default=250)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="8 x 20 messages, one round: a smoke test")
    ap.add_argument("--profile", help="write cProfile stats of the daemon here and print them; no table")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.per = 1, 20
    with tempfile.TemporaryDirectory(prefix="bench-concurrent.") as d:
        Path(d).chmod(0o755)
        if args.profile:
            profile(args, Path(d))
            return 0
        results, rows = run(args, Path(d))
    print(results_table(results, args.procs, args.per))
    print()
    print(common.rows_table(rows))
    common.write_json(args.json, {"concurrent": results, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
