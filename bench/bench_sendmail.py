"""`sendmail -t -i < 2 KB message`: latency (median, p90) and peak RSS, relay-agent vs its peers.

Measured in one run, because passes differ by up to 35 % on a busy 2-core machine:
- relay-agent's installed stub (agent.stub.render: `#!<venv python> -SE`), what `install` puts
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

Budget (README.md's figures table): the stub's median <= 20 ms and no slower than Postfix's,
daemon up or down; the same comparison is made for a caller that is not root (PHP-FPM, most
cron jobs).

    .venv/bin/python bench/bench_sendmail.py [--runs 50] [--quick] [--no-peers] [--json OUT]
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
from sink_relay import SinkRelay

# (timed runs, RSS runs, as nobody, rest before each run) -> timeloop's result
Block = Callable[[int, int, bool, float], dict[str, Any]]

PEERS = ("postfix", "nullmailer", "dma", "msmtp")
BUDGET_MS = 20.0
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
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


def stub_script(directory: Path) -> Path:
    from agent import stub

    path = directory / "sendmail"
    path.write_text(stub.render("sendmail", stub.default_python(), stub.default_site_dirs()))
    path.chmod(0o755)
    return path


def measure_agent(msg: Path, runs: int, tmp: Path, postfix: Block | None = None) -> list[dict[str, Any]]:
    """relay-agent's rows. The budget's rows (the stub up and down, as root and as nobody) and
    Postfix's (`postfix(n, r, as_nobody)`: one block of n timed runs with r RSS runs) take
    turns in ROUNDS rounds, so that the VM's drift (up to 2x within the hour) cannot favour
    either side; the console script's rows run once."""
    from tests.support.agent_env import AgentEnv

    stub, console = str(stub_script(tmp)), str(common.VENV_BIN / "sendmail")
    # PHP-FPM and most cron jobs are not root: they cannot fsync the 1733 maildrop, so with
    # the daemon up they hand mail over the socket (agent.submission.deliver); Postfix's
    # postdrop is setgid, so for it nobody is root with setpriv's cost added
    nobody = " ".join([*AS_NOBODY, stub])
    rounds = ROUNDS if runs >= 10 * ROUNDS else 1
    (tmp / "agent").mkdir()
    # upstream: the lean TLS sink in its own process, as the peers' is in their namespace;
    # the aiosmtpd stand-in would spend the 2 cores that the next sendmail is timed on
    with SinkRelay(tmp) as relay:
        ours = Ours(AgentEnv(tmp / "agent", relay), msg)
        for r in range(rounds):
            rss = RSS_RUNS if r == 0 else 0
            # down first: the up block's daemon takes these files in before its timing starts
            ours.down(STUB_DOWN, stub, runs // rounds, rss)
            ours.up(
                [(STUB_UP, stub, 0.0), (AS_NOBODY_NAME, nobody, 0.0), (AS_NOBODY_PACED, nobody, PACE)],
                runs // rounds,
                rss,
            )
            if postfix is not None:
                ours.blocks.setdefault(POSTFIX, []).append(postfix(runs // rounds, rss, False, 0.0))
                ours.blocks.setdefault(POSTFIX_NOBODY, []).append(postfix(runs // rounds, rss, True, 0.0))
                ours.blocks.setdefault(POSTFIX_PACED, []).append(postfix(runs // rounds, 0, True, PACE))
        ours.down(CONSOLE_DOWN, console, runs, RSS_RUNS)
        ours.up([(CONSOLE_UP, console, 0.0)], runs, RSS_RUNS)
        relayed = f"{relay.finish()['count']}/{ours.submitted} relayed in all"
    up = (STUB_UP, AS_NOBODY_NAME, AS_NOBODY_PACED, CONSOLE_UP)
    results = [summarize(n, pooled(ours.blocks[n]), relayed) for n in up]
    for name in (STUB_DOWN, CONSOLE_DOWN):
        note = f"{ours.dropped[name]} files in maildrop, taken in by the next daemon start"
        results.append(summarize(name, pooled(ours.blocks[name]), note))
    if postfix is not None:
        results.append(peer_row("postfix", ours.blocks[POSTFIX], True))
        results.append(peer_row("postfix", ours.blocks[POSTFIX_NOBODY], True, POSTFIX_NOBODY))
        results.append(peer_row("postfix", ours.blocks[POSTFIX_PACED], True, POSTFIX_PACED))
    return results


class Ours:
    """relay-agent's timed blocks, what they submitted and what they left in the maildrop."""

    def __init__(self, env: Any, msg: Path) -> None:
        self.env, self.msg = env, msg
        self.blocks: dict[str, list[dict[str, Any]]] = {}
        self.dropped: dict[str, int] = {}
        self.submitted = 0

    def _time(self, name: str, cmd: str, runs: int, rss: int, gap: float = 0.0) -> None:
        res = timeloop([*cmd.split(), "-t", "-i"], self.msg, runs, env=self.env.env, rss_runs=rss, gap=gap)
        self.blocks.setdefault(name, []).append(res)
        self.submitted += runs + WARMUP + rss  # the warm-up and RSS runs are real mail too

    def down(self, name: str, cmd: str, runs: int, rss: int) -> None:
        before = _maildrop_count(self.env.maildrop)
        self._time(name, cmd, runs, rss)
        self.dropped[name] = self.dropped.get(name, 0) + _maildrop_count(self.env.maildrop) - before

    def up(self, cmds: list[tuple[str, str, float]], runs: int, rss: int) -> None:
        """Each command (name, command line, rest before each run) timed with the daemon
        running, once it has taken in what the maildrop held; the queue drained before the
        daemon stops. Paced commands take no RSS runs: their unpaced row has them."""
        try:
            self.env.start()
            self.env.wait_queue_empty(60)
        except (RuntimeError, TimeoutError) as exc:
            for name, _, _ in cmds:
                self.blocks.setdefault(name, []).append({"error": f"daemon: {common.brief(str(exc))}"})
            self.env.stop()
            return
        try:
            for name, cmd, gap in cmds:
                self._time(name, cmd, runs, 0 if gap else rss, gap)
            self.env.wait_queue_empty(60)
        finally:
            self.env.stop()


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


def _maildrop_count(path: Path) -> int:
    return sum(1 for n in os.listdir(path) if not n.startswith(".")) if path.is_dir() else 0


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
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="5 runs, for a smoke test")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    runs = 5 if args.quick else max(args.runs, 30)
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
        results += measure_agent(msg, runs, tmp, postfix)
        for p in peers:
            if ready[p] != "ok":
                results.append(summarize(p, {"error": ready[p]}))
            elif p != "postfix":
                results.append(peer_row(p, [peer_block(p, msg, runs, tls)], True))
        if ready.get("postfix") == "ok" and peer_check("postfix", None) == "ok":
            results.append(peer_row("postfix", [peer_block("postfix", msg, runs, None)], False))
    rows = budget_rows(results)
    print(results_table(results))
    print()
    print(common.rows_table(rows))
    common.write_json(args.json, {"sendmail": results, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
