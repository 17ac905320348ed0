"""`sendmail -t -i < 2 KB message`: latency (median, p90) and peak RSS, relay-agent vs its peers.

Measured in one run, because passes differ by up to 35 % on a busy 2-core machine:
- relay-agent's installed stub (agent.submit.stub.render: `#!<venv python> -SE`), what `install` puts
  at /usr/sbin/sendmail: as root with the daemon running and down (the maildrop either way),
  and as nobody with it running (the drop socket), back to back and one every PACE seconds;
- the plain console script .venv/bin/sendmail, for comparison (pip's wrapper imports `re`);
- Postfix, nullmailer, dma and msmtp, each in its own namespace (bench/peers.sh), relaying as
  relay-agent does, over STARTTLS with AUTH to bench/tls_sink.py (a null client for the Elastx
  relay does the same), and Postfix also to its plain smtp-sink as earlier runs measured it;
  Postfix also as nobody (its postdrop setgid, as Debian installs it), the same two ways;
- floors: spawning /bin/true and `python -S -E -c pass` (which includes the interpreter's
  teardown; the stub skips it with posix._exit, so it can come in under this "floor").

The rows compared with Postfix's (VERSUS) and Postfix's own are timed in ROUNDS alternating
blocks and pooled, so drift within the run falls on both sides alike; each ratio comes with a
95 % bootstrap interval.

With `--tree PATH` (repeatable; see bench/trees.py) relay-agent's stub rows are also measured for
that checkout, with its own daemon and its own stub, in the same rounds (the trees' order
reversed every other round): each tree's median with its 95 % bootstrap interval and this
checkout's / that tree's ratio with its interval. Its rows are named "LABEL: ..." ("before").

Budget (README.md's figures table): the stub's median <= 20 ms and no slower than Postfix's,
daemon up or down; the same comparison is made for a caller that is not root (PHP-FPM, most
cron jobs).

    .venv/bin/python bench/bench_sendmail.py [--runs 50] [--quick] [--no-peers] [--json OUT]
        [--tree /tmp/before [--rounds 12]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import trees
from sendmail_blocks import AS_NOBODY, RSS_RUNS, Ours, pooled, summarize, timeloop
from sink_relay import SinkRelay

# (timed runs, RSS runs, as nobody, rest before each run) -> timeloop's result
Block = Callable[[int, int, bool, float], dict[str, Any]]

PEERS = ("postfix", "nullmailer", "dma", "msmtp")
BUDGET_MS = 20.0
AS_NOBODY_NAME = "relay-agent stub as nobody, daemon up (socket), setpriv included"
STUB_UP, STUB_DOWN = "relay-agent stub, daemon up", "relay-agent stub, daemon down (maildrop)"
CONSOLE_UP = "relay-agent console script, daemon up"
PACE = 0.1  # seconds between the paced rows' runs: one mail per web request, the daemon idle
AS_NOBODY_PACED = f"relay-agent stub as nobody, one every {PACE * 1000:g} ms, setpriv included"
POSTFIX, POSTFIX_NOBODY = "postfix", "postfix as nobody (setgid postdrop), setpriv included"
POSTFIX_PACED = f"postfix as nobody, one every {PACE * 1000:g} ms, setpriv included"
# the budget's comparisons: (what the row says, our row, Postfix's row)
VERSUS = (
    ("daemon up", STUB_UP, POSTFIX),
    ("daemon down (maildrop)", STUB_DOWN, POSTFIX),
    ("as nobody, daemon up", AS_NOBODY_NAME, POSTFIX_NOBODY),
    (f"as nobody, one every {PACE * 1000:g} ms", AS_NOBODY_PACED, POSTFIX_PACED),
)
CONSOLE_DOWN = "relay-agent console script, daemon down (maildrop)"
ROUNDS = 3  # the budget's rows take turns this many times (see measure_agent)
# with --tree: an even number of rounds, so each tree goes first as often as the other, and
# more runs, so that each tree's median has a narrow interval
TREE_ROUNDS, TREE_RUNS = 12, 120


def measure_agent(
    msg: Path, runs: int, tmp: Path, tree_list: list[trees.Tree], postfix: Block | None, rounds: int
) -> list[dict[str, Any]]:
    """relay-agent's rows, for each tree. The budget's rows (the stub up and down, as root and
    as nobody) of every tree and Postfix's (`postfix(n, r, as_nobody)`: one block of n timed
    runs with r RSS runs) take turns in `rounds` rounds, the trees' order reversed every other
    round, so that the VM's drift (up to 2x within the hour) cannot favour either side; the
    console script's rows (this checkout's only) run once."""
    from tests.support.agent_env import AgentEnv

    rounds = min(rounds, max(1, runs // 10))  # at least 10 timed runs in a block
    peer: dict[str, list[dict[str, Any]]] = {POSTFIX: [], POSTFIX_NOBODY: [], POSTFIX_PACED: []}
    # upstream: the lean TLS sink in its own process, as the peers' is in their namespace;
    # the aiosmtpd stand-in would spend the 2 cores that the next sendmail is timed on
    with SinkRelay(tmp) as relay:
        ours = {}
        for t in tree_list:
            (tmp / f"agent-{t.label}").mkdir()
            prefix = "" if t is tree_list[0] else f"{t.label}: "
            ours[t.label] = Ours(AgentEnv(tmp / f"agent-{t.label}", relay), msg, t, tmp, prefix)
        for r in range(rounds):
            rss = RSS_RUNS if r == 0 else 0
            for t in trees.round_order(tree_list, r):
                stub_round(ours[t.label], runs // rounds, rss)
            if postfix is not None:
                peer[POSTFIX].append(postfix(runs // rounds, rss, False, 0.0))
                peer[POSTFIX_NOBODY].append(postfix(runs // rounds, rss, True, 0.0))
                peer[POSTFIX_PACED].append(postfix(runs // rounds, 0, True, PACE))
        first, console = ours[tree_list[0].label], str(common.VENV_BIN / "sendmail")
        first.down(CONSOLE_DOWN, console, runs, RSS_RUNS)
        first.up([(CONSOLE_UP, console, 0.0)], runs, RSS_RUNS)
        relayed = f"{relay.finish()['count']}/{sum(o.submitted for o in ours.values())} relayed in all"
    results = [r for o in ours.values() for r in agent_rows(o, relayed)]
    if postfix is not None:
        results.append(peer_row("postfix", peer[POSTFIX], True))
        results.append(peer_row("postfix", peer[POSTFIX_NOBODY], True, POSTFIX_NOBODY))
        results.append(peer_row("postfix", peer[POSTFIX_PACED], True, POSTFIX_PACED))
    return results


def stub_round(ours: Ours, runs: int, rss: int) -> None:
    """One round of a tree's stub blocks: with the daemon down, then up (root, nobody, paced)."""
    # PHP-FPM and most cron jobs are not root: they cannot fsync the 1733 maildrop, so with
    # the daemon up they hand mail over the socket (agent.submit.submission.deliver); Postfix's
    # postdrop is setgid, so for it nobody is root with setpriv's cost added
    nobody = " ".join([*AS_NOBODY, ours.stub])
    # down first: the up block's daemon takes these files in before its timing starts
    ours.down(STUB_DOWN, ours.stub, runs, rss)
    ours.up(
        [(STUB_UP, ours.stub, 0.0), (AS_NOBODY_NAME, nobody, 0.0), (AS_NOBODY_PACED, nobody, PACE)],
        runs,
        rss,
    )


def agent_rows(ours: Ours, relayed: str) -> list[dict[str, Any]]:
    rows = [
        ours.row(n, relayed)
        for n in (STUB_UP, AS_NOBODY_NAME, AS_NOBODY_PACED, CONSOLE_UP)
        if ours.prefix + n in ours.blocks
    ]
    for name in (STUB_DOWN, CONSOLE_DOWN):
        if ours.prefix + name in ours.blocks:
            note = f"{ours.dropped[ours.prefix + name]} files in maildrop, taken in by the next daemon start"
            rows.append(ours.row(name, note))
    return rows


def tree_rows(tree_list: list[trees.Tree], results: list[dict[str, Any]]) -> list[common.Row]:
    """This checkout's stub / each other tree's, row by row, from the interleaved rounds."""
    by = {r["name"]: r for r in results}
    new, rows = tree_list[0].label, []
    for t in tree_list[1:]:
        for name in (STUB_UP, STUB_DOWN, AS_NOBODY_NAME, AS_NOBODY_PACED):
            a, b = by.get(name, {}), by.get(f"{t.label}: {name}", {})
            rounds = zip(a.get("block_ms", []), b.get("block_ms", []), strict=False)
            paired = [x / y for x, y in rounds if x and y]
            samples = (new, a.get("samples_ms", [])), (t.label, b.get("samples_ms", []))
            rows.append(common.versus_row(name, "ms", *samples, True, paired))
    return rows


PLAIN = " (plain smtp-sink: no TLS, no AUTH)"
PEER_NOTES = {
    "msmtp": "connects to the sink per message",
    "nullmailer": "enqueue; nullmailer-send drains",
    "dma": "enqueue, delivers in a forked child",
    "postfix": "postdrop into maildrop",
}


def peer_tls(tmp: Path) -> Path:
    """What bench/peers.sh needs to make each peer relay as relay-agent does (see SINK_TLS there)."""
    from tests.support.relay_standin import _Pki

    pki = _Pki.get()
    d = tmp / "peer-tls"
    d.mkdir()
    pki.ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pki.good.private_key_and_cert_chain_pem.write_to_path(str(d / "sink.pem"))
    (d / "user").write_text("bench@example.com")
    (d / "password").write_text("bench-" + os.urandom(6).hex())
    for f in d.iterdir():
        f.chmod(0o644)  # the peers' own users read them inside the namespace
    d.chmod(0o755)
    return d


def peer_env(tls: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if tls:
        env.update(SINK_TLS=str(tls), SINK_PYTHON=sys.executable)
    return env


def peer_check(peer: str, tls: Path | None) -> str:
    """ "ok", or why the peer cannot run here."""
    why = subprocess.run(
        [str(common.BENCH / "peers.sh"), "check", peer],
        capture_output=True,
        text=True,
        timeout=120,
        env=peer_env(tls),
    ).stdout.strip()
    return why or "peers.sh check gave no answer"


def peer_block(
    peer: str,
    msg: Path,
    runs: int,
    tls: Path | None,
    rss: int = RSS_RUNS,
    as_nobody: bool = False,
    gap: float = 0.0,
) -> dict[str, Any]:
    """One block of timed runs of the peer in its namespace, relaying to a TLS sink with AUTH
    (`tls`) or to smtp-sink; with `tls`, "sink" is what that sink took meanwhile."""
    user = " ".join(AS_NOBODY) + " " if as_nobody else ""
    prefix = [
        str(common.BENCH / "peers.sh"),
        "run",
        peer,
        "sh",
        "-c",
        f'exec "$@" {user}"$PEER_SENDMAIL" -t -i',
        "sh",
    ]
    res = timeloop(
        [], msg, runs, prefix=prefix, python="/usr/bin/python3", env=peer_env(tls), rss_runs=rss, gap=gap
    )
    if tls and "error" not in res:
        res["sink"] = _sink_count(tls / f"sink-{peer}.out")
    return res


def peer_row(peer: str, blocks: list[dict[str, Any]], tls: bool, name: str = "") -> dict[str, Any]:
    res = pooled(blocks)
    row = summarize(name or (peer if tls else peer + PLAIN), res, PEER_NOTES[peer])
    if tls and "error" not in res:
        row["note"] += (
            f"; STARTTLS + AUTH, the sink took {res['sink']} transactions (its spool drained first)"
        )
    return row


def _sink_count(path: Path) -> int:
    """What the peer's TLS sink counted (its last line); 0 when it could not say."""
    try:
        return int(json.loads(path.read_text().strip().splitlines()[-1])["count"])
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def floors(msg: Path, runs: int) -> list[dict[str, Any]]:
    return [
        summarize("floor: spawn /bin/true", timeloop(["/bin/true"], msg, runs)),
        summarize("floor: setpriv as nobody, /bin/true", timeloop([*AS_NOBODY, "/bin/true"], msg, runs)),
        summarize(
            "floor: python -S -E -c pass",
            timeloop([str(common.VENV_PYTHON), "-S", "-E", "-c", "pass"], msg, runs),
        ),
    ]


def budget_rows(results: list[dict[str, Any]]) -> list[common.Row]:
    by = {r["name"]: r for r in results}
    rows = []
    for state in ("daemon up", "daemon down (maildrop)"):
        ours = by.get(f"relay-agent stub, {state}", {}).get("median_ms")
        ok = None if ours is None else ours <= BUDGET_MS
        rows.append(common.row(f"sendmail stub median, {state}", ours, "ms", "<= 20 ms", ok))
    for state, ours_name, peer_name in VERSUS:
        what = f"sendmail stub vs Postfix, {state}"
        ours, peer = by.get(ours_name, {}), by.get(peer_name, {})
        if ours.get("median_ms") is None or peer.get("median_ms") is None:
            rows.append(common.row(what, None, "", "<= 1.0", None, "Postfix or relay-agent not measured"))
            continue
        low, high = common.ratio_interval(ours["samples_ms"], peer["samples_ms"])
        note = f"Postfix {peer['median_ms']:.2f} ms in the same run; 95 % interval of the ratio"
        note += f" {low:.2f}-{high:.2f} (bootstrap)"
        ratio = ours["median_ms"] / peer["median_ms"]
        rows.append(common.row(what, ratio, "x Postfix", "<= 1.0", ratio <= 1.0, note))
    return rows


def results_table(results: list[dict[str, Any]]) -> str:
    return common.table(
        ["sendmail -t -i (2 KB)", "median ms", "p90 ms", "peak RSS MiB", "runs", "note"],
        [[r["name"], r["median_ms"], r["p90_ms"], r["rss_mib"], r["runs"], r["note"]] for r in results],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, help=f"timed runs per row (50; {TREE_RUNS} with --tree)")
    ap.add_argument("--quick", action="store_true", help="5 runs, for a smoke test")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure beside this one")
    ap.add_argument(
        "--rounds", type=int, help=f"rounds of the budget's rows ({ROUNDS}; {TREE_ROUNDS} with --tree)"
    )
    args = ap.parse_args(argv)
    runs = 5 if args.quick else max(args.runs or (TREE_RUNS if args.tree else 50), 30)
    tree_list = trees.trees(args.tree)
    rounds = args.rounds or (TREE_ROUNDS if args.tree else ROUNDS)
    with tempfile.TemporaryDirectory(prefix="bench-sendmail.") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)  # peers run as other users inside their namespace and read the message
        msg = tmp / "message.eml"
        msg.write_bytes(common.message())
        msg.chmod(0o644)
        peers = [] if args.no_peers else [p for p in args.peers.split(",") if p]
        # each peer relays as relay-agent does (STARTTLS, AUTH); Postfix also as before, plain
        tls = peer_tls(tmp)
        ready = {p: peer_check(p, tls) for p in peers}
        results = floors(msg, runs)
        postfix = None
        if ready.get("postfix") == "ok":
            postfix = lambda n, rss, nobody, gap: peer_block("postfix", msg, n, tls, rss, nobody, gap)  # noqa: E731
        results += measure_agent(msg, runs, tmp, tree_list, postfix, rounds)
        for p in peers:
            if ready[p] != "ok":
                results.append(summarize(p, {"error": ready[p]}))
            elif p != "postfix":
                results.append(peer_row(p, [peer_block(p, msg, runs, tls)], True))
        if ready.get("postfix") == "ok" and peer_check("postfix", None) == "ok":
            results.append(peer_row("postfix", [peer_block("postfix", msg, runs, None)], False))
    rows = budget_rows(results) + tree_rows(tree_list, results)
    print(results_table(results))
    print()
    print(common.rows_table(rows))
    common.write_json(args.json, {"sendmail": results, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
