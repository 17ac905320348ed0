"""agent.status.snapshot: status.json written atomically from the counters, read tolerantly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.status import snapshot
from agent.status.accounts import AccountStatus
from agent.status.counters import Counters


def test_written_from_the_counters_and_read_back(tmp_path: Path) -> None:
    counters = Counters(sent=3, deferred=1)
    counters.accounts["default"] = AccountStatus("default", "ops@example.com", 10.0, 10.0)
    counters.suspend("default", "connect to relay: refused")
    assert counters.relay_suspended == "delivery temporarily suspended: connect to relay: refused"
    path = snapshot.path_in(str(tmp_path))
    snapshot.write(path, counters)
    saved = snapshot.read(str(tmp_path))
    assert saved["pid"] == os.getpid() and saved["counters"]["sent"] == 3
    assert snapshot.counts(saved) == {"sent": 3, "deferred": 1, "bounced": 0}
    assert snapshot.relay_suspended(str(tmp_path)) == counters.relay_suspended
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["status.json"]


@pytest.mark.parametrize("text", [None, "", "{not json", "[1, 2]", '"text"', '{"counters": 7, "pid": "x"}'])
def test_a_missing_or_garbled_file_reads_as_nothing_known(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / "status.json").write_text(text)
    saved = snapshot.read(str(tmp_path))
    assert snapshot.counts(saved) == {"sent": 0, "deferred": 0, "bounced": 0}
    assert snapshot.suspended(saved) is None


def test_a_suspension_ends_with_the_daemon_that_wrote_it(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    saved = {"pid": int(gone.stdout), "relay_suspended": "delivery temporarily suspended: x"}
    (tmp_path / "status.json").write_text(json.dumps(saved))
    assert snapshot.relay_suspended(str(tmp_path)) is None


def test_each_accounts_waiting_mail_shows_its_own_suspension(tmp_path: Path) -> None:
    import time

    from agent.queue import queue_file, view
    from agent.queue.store import Queue

    q = Queue(str(tmp_path / "queue"))
    q.ensure_dirs()
    body = b"From: a@shop.example\r\nSubject: s\r\n\r\nhi\r\n"
    shop = q.enter(
        queue_file.Envelope("a@shop.example", ("x@example.net",), time.time(), account="shop"), body
    )
    default = q.enter(queue_file.Envelope("b@example.com", ("y@example.net",), time.time()), body)
    down = "delivery temporarily suspended: connect to relay.shop.example:587: refused"
    saved = {"pid": os.getpid(), "relay_suspended": None, "accounts": [{"name": "shop", "suspended": down}]}
    (tmp_path / "queue" / "status.json").write_text(json.dumps(saved))
    assert snapshot.suspensions(q.path) == {"shop": down}
    got = {it["id"]: it for it in view.collect(q, str(tmp_path / "maildrop"))}
    assert (got[shop]["state"], got[shop]["last_error"]) == ("deferred", down)
    assert (got[default]["state"], got[default]["last_error"]) == ("queued", None)
    text = view.mailq(q, str(tmp_path / "maildrop"))
    assert f"({down})" in text and f"{default}*" in text and f"{shop} " in text
