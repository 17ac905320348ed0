"""`queue delete` in bulk and the lean `mailq` listing: what they do, not how fast (bench/bench_queue.py).

The daemon runs throughout, with the relay down: deleting under it must leave nothing behind
that it later sends, and it must keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.queue import queue_file, state_file
from agent.queue.ids import new_id
from agent.queue.store import Queue
from agent.queue.view import collect, format_mailq
from tests.support.agent_env import MAILQ, AgentEnv, wait_until
from tests.support.relay_standin import RelayStandin

BODY = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: s\r\n\r\nhi\r\n"


def fixture_queue(queue_dir: Path, senders: list[str]) -> list[str]:
    """Queue files written straight to msg/ (as bench/common.py does), one per sender."""
    q = Queue(str(queue_dir))
    q.ensure_dirs()
    ids = []
    base = time.time() - len(senders)
    for i, sender in enumerate(senders):
        qid = new_id(base + i * 1e-3)
        env = queue_file.Envelope(
            sender=sender, recipients=(f"r{i}@example.net", "x@example.net"), created=base + i
        )
        (queue_dir / "msg" / qid).write_bytes(queue_file.encode(env, BODY))
        ids.append(qid)
    return ids


@pytest.mark.parametrize("suspended", [False, True])
def test_mailq_matches_the_item_listing(tmp_path: Path, suspended: bool) -> None:
    """The fast path (no dict per fresh message) prints what format_mailq(collect()) prints,
    also while the daemon holds delivery back (relay unreachable: status.json says why)."""
    ids = fixture_queue(tmp_path / "queue", ["a@example.com", "", "b@example.com", "c@example.com"])
    q = Queue(str(tmp_path / "queue"))
    deferred = state_file.State(
        "deferred", attempts=2, next_attempt=time.time() + 60, last_error="451 4.3.0 later"
    )
    deferred.rcpt[0] = (state_file.SENT, "")
    q.write_state(ids[1], deferred)
    q.write_state(ids[2], state_file.State("hold"))
    (tmp_path / "queue" / "msg" / "garbage").write_bytes(b"x")  # not an id: ignored by both
    (tmp_path / "maildrop").mkdir()
    if suspended:  # as the daemon writes it; this process stands in for the live daemon
        reason = "delivery temporarily suspended: connect to relay.test:587: Connection refused"
        status = {"pid": os.getpid(), "relay_suspended": reason}
        (tmp_path / "queue" / "status.json").write_text(json.dumps(status))
    env = AgentEnv(tmp_path)
    res = subprocess.run([MAILQ], env=env.env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout == format_mailq(collect(q, str(tmp_path / "maildrop")))
    lines = res.stdout.splitlines()
    assert lines[-1] == f"-- {(4 * (len(BODY)) + 1023) // 1024} Kbytes in 4 Requests."
    fresh_flag = " " if suspended else "*"  # deferred (with the reason) while the relay is unreachable
    assert f"{ids[0]}{fresh_flag}" in res.stdout and f"{ids[2]}!" in res.stdout and f"{ids[1]} " in res.stdout
    assert "(451 4.3.0 later)" in res.stdout and "MAILER-DAEMON" in res.stdout
    assert res.stdout.count("Connection refused)") == (2 if suspended else 0)  # ids 0 and 3


def test_bulk_delete_with_the_daemon_running(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    env = AgentEnv(tmp_path, relay_standin)
    senders = ["keep@example.com", "Spam@Example.com"] * 150
    ids = fixture_queue(env.queue_dir, senders)
    env.start()
    try:
        wait_until(lambda: len(os.listdir(env.queue_dir / "state")) >= 10, timeout=30)  # attempts made
        res = env.cli("queue", "delete", "--sender", "spam@example.com")
        assert res.returncode == 0 and res.stdout.strip() == "deleted 150 message(s)", res
        assert sorted(os.listdir(env.queue_dir / "msg")) == sorted(ids[0::2])
        res = env.cli("queue", "delete", ids[0].lower())
        assert res.returncode == 0 and res.stdout.strip() == "deleted 1 message(s)", res
        res = env.cli("queue", "delete", ids[0])
        assert res.returncode == 70 and res.stderr.strip() == f"relay-agent: no message {ids[0]} in the queue"
        res = env.cli("queue", "delete", "--all")
        assert res.returncode == 0 and res.stdout.strip() == "deleted 149 message(s)", res
        assert os.listdir(env.queue_dir / "msg") == []
        # the old msg/ and state/ were moved aside whole; a detached child removes them
        wait_until(lambda: not [n for n in os.listdir(env.queue_dir) if n.startswith("deleted.")], timeout=30)
        assert [n for n in os.listdir(env.queue_dir / "state") if not n.endswith(".tmp")] == []
        assert subprocess.run([MAILQ], env=env.env, capture_output=True, text=True).stdout == (
            "Mail queue is empty\n"
        )
        # the daemon carries on: what it had scheduled is gone, a new message goes out alone
        relay_standin.up()
        assert env.smtp_data(BODY, rcpt="after@example.net")[0] == 250
        env.cli("queue", "flush")
        [msg] = relay_standin.wait_for(1, timeout=20)
        time.sleep(1.5)  # retry_max is 2 s: anything deleted but still scheduled would come now
        assert [tuple(m.rcpt_tos) for m in relay_standin.messages] == [("after@example.net",)]
        assert b"\r\n\r\nhi\r\n" in msg.data
        env.wait_queue_empty()
        assert env.proc is not None and env.proc.poll() is None
    finally:
        assert env.stop() == 0
    assert "Traceback" not in env.log()
