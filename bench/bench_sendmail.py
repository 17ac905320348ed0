"""`sendmail -t -i < 2 KB message`: latency (median, p90) and peak RSS, relay-agent vs its peers.

Measured in one run, because passes differ by up to 35 % on a busy 2-core machine:
- relay-agent's installed stub (agent.stub.render: `#!<venv python> -SE`), what `install` puts
  at /usr/sbin/sendmail, with the daemon running (socket) and down (maildrop);
- the plain console script .venv/bin/sendmail, for comparison (pip's wrapper imports `re`);
- Postfix, nullmailer, dma and msmtp, each in its own namespace (bench/peers.sh), relaying as
  relay-agent does, over STARTTLS with AUTH to bench/tls_sink.py (a null client for the Elastx
  relay does the same), and Postfix also to its plain smtp-sink as earlier runs measured it;
- floors: spawning /bin/true and `python -S -E -c pass`.

Budget (INTERFACE.md): the stub's median <= 20 ms and no slower than Postfix's, daemon up or down.

    .venv/bin/python bench/bench_sendmail.py [--runs 50] [--quick] [--no-peers] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
from sink_relay import SinkRelay

PEERS = ("postfix", "nullmailer", "dma", "msmtp")
BUDGET_MS = 20.0
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
AS_NOBODY_NAME = "relay-agent stub as nobody, daemon up (socket)"


def timeloop(
    cmd: list[str],
    msg: Path,
    runs: int,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run bench/timeloop.py (optionally inside `prefix`, e.g. a peer's namespace)."""
    loop = [python, str(common.BENCH / "timeloop.py"), "--runs", str(runs), "--input", str(msg), "--"]
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
    }


def stub_script(directory: Path) -> Path:
    from agent import stub

    path = directory / "sendmail"
    path.write_text(stub.render("sendmail", stub.default_python(), stub.default_site_dirs()))
    path.chmod(0o755)
    return path


def measure_agent(msg: Path, runs: int, tmp: Path) -> list[dict[str, Any]]:
    from tests.support.agent_env import AgentEnv

    stub = stub_script(tmp)
    console = str(common.VENV_BIN / "sendmail")
    (tmp / "agent").mkdir()
    # upstream: the lean TLS sink in its own process, as Postfix's runs deliver to smtp-sink;
    # the aiosmtpd stand-in would spend the 2 cores that the next sendmail is timed on
    with SinkRelay(tmp) as relay:
        env = AgentEnv(tmp / "agent", relay)
        results = _measure_up(env, [("relay-agent stub, daemon up", str(stub))], msg, runs)
        # PHP-FPM and most cron jobs are not root: they cannot fsync the 1733 maildrop, so
        # with the daemon up they hand mail over the socket (agent.sendmail.deliver)
        results += _measure_up(env, [(AS_NOBODY_NAME, " ".join([*AS_NOBODY, str(stub)]))], msg, runs)
        results += _measure_up(env, [("relay-agent console script, daemon up", console)], msg, runs)
        delivered = relay.finish()["count"]
    submitted = sum(r["runs"] + 3 + 5 for r in results)  # the warm-up and RSS runs are real too
    for r in results:
        r["note"] = "; ".join(x for x in (r["note"], f"{delivered}/{submitted} relayed in all") if x)
    for name, cmd in (
        ("relay-agent stub, daemon down (maildrop)", str(stub)),
        ("relay-agent console script, daemon down (maildrop)", console),
    ):
        before = _maildrop_count(env.maildrop)
        res = summarize(name, timeloop([cmd, "-t", "-i"], msg, runs, env=env.env))
        dropped = _maildrop_count(env.maildrop) - before
        res["note"] = "; ".join(x for x in (res["note"], f"{dropped} files in maildrop") if x)
        results.append(res)
    return results


def _measure_up(env: Any, cmds: list[tuple[str, str]], msg: Path, runs: int) -> list[dict[str, Any]]:
    """Each command timed with the daemon running; the queue drained before the daemon stops."""
    try:
        env.start()
    except RuntimeError as exc:
        why = f"daemon did not start: {common.brief(str(exc))}"
        return [summarize(name, {"error": why}) for name, _ in cmds]
    try:
        results = [
            summarize(name, timeloop([*cmd.split(), "-t", "-i"], msg, runs, env=env.env))
            for name, cmd in cmds
        ]
        env.wait_queue_empty(60)
    finally:
        env.stop()
    return results


def _maildrop_count(path: Path) -> int:
    return sum(1 for n in os.listdir(path) if not n.startswith(".")) if path.is_dir() else 0


PLAIN = " (plain smtp-sink: no TLS, no AUTH)"


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


def measure_peer(peer: str, msg: Path, runs: int, tls: Path | None) -> dict[str, Any]:
    """One peer in its namespace, relaying to a TLS sink with AUTH (`tls`) or to smtp-sink."""
    name = peer if tls else peer + PLAIN
    env = dict(os.environ)
    if tls:
        env.update(SINK_TLS=str(tls), SINK_PYTHON=sys.executable)
    why = subprocess.run(
        [str(common.BENCH / "peers.sh"), "check", peer], capture_output=True, text=True, timeout=120, env=env
    ).stdout.strip()
    if why != "ok":
        return summarize(name, {"error": why or "peers.sh check gave no answer"})
    prefix = [
        str(common.BENCH / "peers.sh"),
        "run",
        peer,
        "sh",
        "-c",
        'exec "$@" "$PEER_SENDMAIL" -t -i',
        "sh",
    ]
    note = {
        "msmtp": "connects to the sink per message",
        "nullmailer": "enqueue; nullmailer-send drains",
        "dma": "enqueue, delivers in a forked child",
        "postfix": "postdrop into maildrop",
    }[peer]
    res = summarize(name, timeloop([], msg, runs, prefix=prefix, python="/usr/bin/python3", env=env), note)
    if tls:
        count = _sink_count(tls / f"sink-{peer}.out")
        res["note"] += f"; STARTTLS + AUTH, the sink took {count} transactions before the namespace closed"
    return res


def _sink_count(path: Path) -> str:
    """What the peer's TLS sink counted (its last line), or why not."""
    try:
        return str(json.loads(path.read_text().strip().splitlines()[-1])["count"])
    except (OSError, ValueError, KeyError, IndexError):
        return "unknown"


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
    postfix = by.get("postfix", {}).get("median_ms")
    rows = []
    for state in ("daemon up", "daemon down (maildrop)"):
        ours = by.get(f"relay-agent stub, {state}", {}).get("median_ms")
        ok = None if ours is None else ours <= BUDGET_MS
        rows.append(common.row(f"sendmail stub median, {state}", ours, "ms", "<= 20 ms", ok))
        if ours is not None and postfix is not None:
            rows.append(
                common.row(
                    f"sendmail stub vs Postfix, {state}",
                    ours / postfix,
                    "x Postfix",
                    "<= 1.0",
                    ours <= postfix,
                    f"Postfix {postfix:.1f} ms in the same run",
                )
            )
        else:
            rows.append(
                common.row(
                    f"sendmail stub vs Postfix, {state}",
                    None,
                    "",
                    "<= 1.0",
                    None,
                    "Postfix or relay-agent not measured",
                )
            )
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
        results = floors(msg, runs)
        results += measure_agent(msg, runs, tmp)
        if not args.no_peers:
            # each peer as relay-agent relays (STARTTLS, AUTH); Postfix also as before, plain
            tls = peer_tls(tmp)
            peers = [p for p in args.peers.split(",") if p]
            results += [measure_peer(p, msg, runs, tls) for p in peers]
            results += [measure_peer(p, msg, runs, None) for p in peers if p == "postfix"]
    rows = budget_rows(results)
    print(results_table(results))
    print()
    print(common.rows_table(rows))
    common.write_json(args.json, {"sendmail": results, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
