"""Shared bits of the benchmarks: paths, the test message, statistics, tables, result files.

Each bench script prints a markdown table and, with `--json PATH`, writes its rows there for
run_all.py. A row is a dict: {"what", "value", "unit", "budget", "ok", "note"}; "ok" is
True/False against its budget (README.md's figures table), or None where there is no budget.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"
VENV_PYTHON = VENV_BIN / "python"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Row = dict[str, Any]


def message(size: int = 2048, domain: str = "example.com") -> bytes:
    """A plain 2 KB message with To/Cc/Bcc for `sendmail -t -i`, LF line endings as apps write."""
    head = (
        f"From: Bench <bench@{domain}>\n"
        "To: Alice <alice@example.net>\n"
        "Cc: bob@example.net\n"
        "Bcc: carol@example.net\n"
        "Subject: relay-agent benchmark message\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body = b""
    while len(head) + len(body) + len(line) <= size:
        body += line
    body += b"." * (size - len(head) - len(body) - 1) + b"\n"
    return head + body


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def p90(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return float(s[min(len(s) - 1, round(0.9 * (len(s) - 1)))])


def ratio_interval(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % bootstrap interval of median(a) / median(b): how far the ratio of two medians
    measured in one run could move by chance alone (each side resampled on its own)."""
    rng = random.Random(seed)  # the same samples give the same interval on the page
    ratios = sorted(
        median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b))) for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def median_interval(xs: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of median(xs)."""
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def versus_row(
    what: str,
    unit: str,
    new: tuple[str, Sequence[float]],
    old: tuple[str, Sequence[float]],
    lower_better: bool,
    paired: Sequence[float] = (),
) -> Row:
    """new's median / old's, from samples interleaved in one run, with each median's 95 % bootstrap
    interval and the ratio's. The verdict is the issue's "no slower beyond the bootstrap interval":
    slower only when the whole interval of the ratio lies on the slow side of 1. `paired`: the
    same ratio round by round (each round ran both sides back to back), shown beside it because
    it does not carry the load's swings between rounds."""
    (new_label, xs), (old_label, ys) = new, old
    if not xs or not ys:
        return row(f"{what}, {new_label} / {old_label}", None, "", "", None, "a side was not measured")
    low, high = ratio_interval(xs, ys)
    ratio = median(xs) / median(ys)
    parts = []
    for label, zs in new, old:
        a, b = median_interval(zs)
        parts.append(f"{label} {median(zs):.2f} {unit} ({a:.2f}-{b:.2f}, n={len(zs)})")
    note = "; ".join(parts) + f"; ratio 95 % interval {low:.2f}-{high:.2f} (bootstrap)"
    if len(paired) > 1:
        a, b = median_interval(paired)
        note += f"; paired by round {median(paired):.2f} ({a:.2f}-{b:.2f}, {len(paired)} rounds)"
    slower = low > 1.0 if lower_better else high < 1.0
    return row(
        f"{what}, {new_label} / {old_label}",
        ratio,
        f"x {old_label}",
        "no slower beyond the 95 % interval",
        not slower,
        note,
    )


def row(
    what: str,
    value: float | str | None,
    unit: str = "",
    budget: str = "",
    ok: bool | None = None,
    note: str = "",
) -> Row:
    return {"what": what, "value": value, "unit": unit, "budget": budget, "ok": ok, "note": note}


def fmt_value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        out.append("| " + " | ".join(fmt_value(c) for c in r) + " |")
    return "\n".join(out)


def rows_table(rows: Sequence[Row]) -> str:
    verdict = {True: "ok", False: "OVER BUDGET", None: ""}
    return table(
        ["figure", "value", "unit", "budget", "", "note"],
        [[r["what"], r["value"], r["unit"], r["budget"], verdict[r["ok"]], r["note"]] for r in rows],
    )


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1)
        os.replace(tmp, path)


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def write_queue_files(
    queue_dir: Path, count: int, message: bytes, recipient: str = "alice@example.net"
) -> None:
    """A benchmark fixture: `count` fresh queue files in the exact agent/queue/queue_file.py format.

    Written directly and without fsync (Queue.enter fsyncs each file and the directory, which
    takes minutes for 100,000); ids are made from consecutive microseconds so they are unique
    and sort by arrival, as agent.queue.ids.new_id's would.
    """
    import time

    from agent.queue import queue_file
    from agent.queue.ids import new_id
    from agent.queue.store import Queue

    q = Queue(str(queue_dir))
    q.ensure_dirs()
    body = crlf(message)
    base = time.time() - count * 1e-6
    for i in range(count):
        now = base + i * 1e-6
        data = queue_file.encode(
            queue_file.Envelope(sender="bench@example.com", recipients=(recipient,), created=now), body
        )
        qid = new_id(now)
        fd = os.open(os.path.join(q.msg, qid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    os.sync()  # one flush for the lot, so the daemon's start-up does not pay for writeback


def brief(text: str) -> str:
    """The telling line of a traceback or log: the last one naming an error, else the last one."""
    lines = [ln.strip(" │╰╯─") for ln in text.splitlines() if ln.strip(" │╰╯─")]
    errors = [ln for ln in lines if "rror" in ln or "xception" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]
