"""Each benchmark runs in its tiny mode and prints its table with real figures.

Not timing assertions (budgets are the benchmark's business): these check that the scripts
still run against the current code, measure what they claim (messages really relayed, files
really in the maildrop), and that run_all writes its page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEERS_FETCHED = (BENCH / ".peers" / "root" / "dma").is_dir() and (
    BENCH / ".peers" / "root" / "postfix"
).is_dir()


def run(script: str, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def table_row(out: str, starts: str) -> list[str]:
    """The cells of the first table row whose first cell starts with `starts`."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(starts):
            return cells
    raise AssertionError(f"no row starting {starts!r} in:\n{out}")


def number(cell: str) -> float:
    return float(cell)  # "n/a" (not measured) fails here, with the cell in the message


def test_sendmail_bench_quick() -> None:
    peers = ["--peers", "dma"] if PEERS_FETCHED and os.geteuid() == 0 else ["--no-peers"]
    out = run("bench_sendmail.py", "--quick", *peers)
    for name in ("relay-agent stub, daemon up", "relay-agent stub, daemon down (maildrop)"):
        cells = table_row(out, name)
        assert number(cells[1]) > 0 and number(cells[2]) >= number(cells[1]), cells
        assert number(cells[3]) > 1, cells  # peak RSS in MiB: a Python process
    # every submission really arrived: 5 timed + 3 warm-up + 5 RSS runs in each of five rows
    # (up: root stub, stub as nobody, console script; down: stub, console script) and 5 + 3
    # in the paced row of the stub as nobody, as the maildrop's files are taken in by the
    # daemon's next start
    assert "73/73 relayed in all" in table_row(out, "relay-agent stub, daemon up")[5]
    assert "13 files in maildrop" in table_row(out, "relay-agent stub, daemon down")[5]
    assert table_row(out, "sendmail stub median, daemon up")[1] != "n/a"
    if "dma" in peers:
        dma = table_row(out, "dma")
        assert number(dma[1]) > 0
        # it relayed as relay-agent does (the TLS sink takes mail only after STARTTLS and
        # AUTH), all of it: 13 submissions, to 3 recipients each, one transaction per recipient
        took = dma[5].partition("the sink took ")[2].split()
        assert took and int(took[0]) == 39, dma


def test_delivery_bench_quick() -> None:
    out = run("bench_delivery.py", "--quick")
    assert number(table_row(out, "relay stand-in capacity")[1]) > 0
    paced = number(table_row(out, "delivered rate")[1])
    assert 5 < paced < 20, out  # rate = 10: paced, not a burst (the 2 % budget needs the full run)
    assert number(table_row(out, "end to end, rate = 1000")[1]) > 0
    assert "could not measure" not in out


def test_queue_bench_quick() -> None:
    out = run("bench_queue.py", "--quick")
    startup = number(table_row(out, "daemon start-up to 220, 1,000 queued")[1])
    assert 0 < startup < 60
    rss = number(table_row(out, "daemon VmRSS at 220, 1,000 queued")[1])
    assert 5 < rss < 1000
    # the relay was down: nothing drained
    assert "1,000 still queued" in table_row(out, "daemon VmRSS after 1 s, 1,000 queued")[5]


def test_run_all_writes_page(tmp_path: Path) -> None:
    page = tmp_path / "latest.md"
    run("run_all.py", "--quick", "--only", "queue", "--out", str(page))
    text = page.read_text()
    assert "- machine: " in text and "- date: " in text
    assert "## Budgets" in text and "## Daemon with a big queue" in text
    assert table_row(text, "daemon start-up to 220, 1,000 queued")[1] != "n/a"


@pytest.mark.skipif(os.geteuid() != 0, reason="private namespaces need root")
def test_peer_namespace_is_private() -> None:
    """Inside a peer's namespace only lo exists and /etc writes do not reach the host."""
    if not PEERS_FETCHED:
        fetch = subprocess.run(
            [str(BENCH / "peers.sh"), "fetch"], capture_output=True, text=True, timeout=600
        )
        assert fetch.returncode == 0, fetch.stderr
    probe = "ls /sys/class/net 2>/dev/null; touch /etc/relay-agent-bench-probe; echo SENDMAIL=$PEER_SENDMAIL"
    proc = subprocess.run(
        [str(BENCH / "peers.sh"), "run", "dma", "sh", "-c", "mount -t sysfs sysfs /sys && " + probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["lo", "SENDMAIL=/usr/sbin/sendmail"], proc.stdout
    assert not Path("/etc/relay-agent-bench-probe").exists()


def test_ratio_interval_brackets_the_ratio_and_narrows_with_separation() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    same = [float(x % 7) + 5 for x in range(60)]
    low, high = common.ratio_interval(same, same)
    assert low < 1.0 < high  # equal samples: the interval must admit parity
    doubled = [2 * x for x in same]
    low, high = common.ratio_interval(doubled, same)
    assert 1.5 < low <= 2.0 <= high < 2.7  # twice as slow: parity is outside it
    assert common.ratio_interval(doubled, same) == (low, high)  # seeded: the page repeats
