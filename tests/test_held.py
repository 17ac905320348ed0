"""Held mail as a queue state: what the state file keeps, what `mailq`, `queue list --json` and
`status --json` show, and which messages `queue release ID|--all|--sender|--domain` releases.

Queues are written through the real Queue (no daemon needed to look at them); the CLI runs as a
subprocess. A daemon that delivers released mail at once is in tests/test_quotas_daemon.py and
tests/test_daemon.py (hold, release).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import QueueConfig
from agent.delivery.decisions import Triage, index_due, triage
from agent.queue import queue_file, state_file
from agent.queue.ids import new_id
from agent.queue.store import Queue
from tests.support.agent_env import MAILQ, AgentEnv

BODY = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: s\r\n\r\nhi\r\n"
QUOTA_REASON = "held: user nobody is over its quota of 5/min messages ([quotas])"


def queued(q: Queue, sender: str, rcpt: str, at: float) -> str:
    qid = new_id(at)
    env = queue_file.Envelope(sender=sender, recipients=(rcpt,), created=at)
    q.enter(env, BODY, qid)
    return qid


def held(held_for: str, reason: str) -> state_file.State:
    state = state_file.State()
    state.hold(held_for, reason)
    return state


@pytest.fixture
def site(tmp_path: Path) -> tuple[AgentEnv, Queue, dict[str, str]]:
    """Six messages: fresh, deferred, held by hand, held for a quota (two senders), held for a
    domain's DNS (an envelope sender of another domain)."""
    env = AgentEnv(tmp_path)
    q = Queue(str(env.queue_dir))
    q.ensure_dirs()
    env.maildrop.mkdir()
    t = time.time() - 60
    ids = {
        "fresh": queued(q, "app@example.com", "fresh@example.net", t),
        "deferred": queued(q, "app@example.com", "deferred@example.net", t + 1),
        "manual": queued(q, "app@example.com", "manual@example.net", t + 2),
        "quota1": queued(q, "cron@other.test", "q1@example.net", t + 3),
        "quota2": queued(q, "web@example.com", "q2@example.net", t + 4),
        "dns": queued(q, "bounces@mailer.test", "dns@example.net", t + 5),
    }
    q.write_state(ids["deferred"], state_file.State("deferred", 1, time.time() + 600, "451 4.3.0 later"))
    q.write_state(ids["manual"], held(state_file.MANUAL, "held by `relay-agent queue hold`"))
    q.write_state(ids["quota1"], held("quota nobody", QUOTA_REASON))
    q.write_state(ids["quota2"], held("quota nobody", QUOTA_REASON))
    q.write_state(ids["dns"], held("dns example.org", "dkim FAIL for example.org; publish: ..."))
    return env, q, ids


def states(env: AgentEnv) -> dict[str, tuple[str, str | None]]:
    return {x["id"]: (x["state"], x["last_error"]) for x in env.queue_json()}


def test_state_file_keeps_why_and_reads_old_hold_files() -> None:
    state = held("quota nobody", QUOTA_REASON)
    data = state_file.encode_state(state)
    assert b"state held\n" in data and b"held_for quota nobody\n" in data
    back = state_file.decode_state(data)
    assert back == state and back.held and back.last_error == QUOTA_REASON
    old = state_file.decode_state(b"state hold\nattempts 2\nnext 0.0\nfailed_at 0.0\n")
    assert old.held and old.state == state_file.HELD and old.attempts == 2
    back.release()
    again = state_file.decode_state(state_file.encode_state(back))
    assert (again.state, again.held_for, again.last_error, again.held) == ("queued", "", "", False)


@pytest.mark.parametrize("written", ["held", "hold"])
def test_the_scheduler_leaves_held_mail_alone(written: str) -> None:
    state = state_file.decode_state(f"state {written}\nerror why\n".encode())
    env = queue_file.Envelope("a@example.com", ("b@example.net",), time.time())
    settings = QueueConfig()
    assert index_due(state, settings) is None
    assert triage(state, env, time.time() + settings.max_age + 1, settings) is Triage.HELD


def test_listed_as_held_with_the_reason(site: tuple[AgentEnv, Queue, dict[str, str]]) -> None:
    env, _, ids = site
    got = states(env)
    assert got[ids["fresh"]] == ("queued", None)
    assert got[ids["deferred"]] == ("deferred", "451 4.3.0 later")
    assert got[ids["quota1"]] == ("held", QUOTA_REASON)
    assert got[ids["manual"]] == ("held", "held by `relay-agent queue hold`")
    status = env.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    queue = json.loads(status.stdout)["queue"]
    assert queue.pop("oldest_seconds") >= 0  # held mail waits too: it counts
    assert queue == {"queued": 1, "deferred": 1, "held": 4, "failed": 0}
    assert "4 held" in env.cli("status").stdout


def test_mailq_marks_held_mail_with_a_bang_and_says_why(site: tuple[AgentEnv, Queue, dict[str, str]]) -> None:
    env, _, ids = site
    res = subprocess.run([MAILQ], env=env.env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(ids["quota1"]))
    assert lines[first].startswith(ids["quota1"] + "! ")  # Postfix's on-hold mark
    assert lines[first + 1] == f"({QUOTA_REASON})"
    assert lines[first + 2].strip() == "q1@example.net"
    bangs = [line[:17] for line in lines if line[16:17] == "!"]
    assert sorted(bangs) == sorted(ids[k] + "!" for k in ("manual", "quota1", "quota2", "dns"))


def test_release_by_sender_releases_only_that_senders_held_mail(
    site: tuple[AgentEnv, Queue, dict[str, str]],
) -> None:
    env, _, ids = site
    res = env.cli("queue", "release", "--sender", "CRON@other.test")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "released 1 message(s)"
    got = states(env)
    assert got[ids["quota1"]] == ("queued", None)
    assert [k for k in ids if got[ids[k]][0] == "held"] == ["manual", "quota2", "dns"]
    assert got[ids["deferred"]][0] == "deferred"  # not held: a release leaves it as it is


def test_release_by_domain_takes_its_senders_and_mail_held_for_its_records(
    site: tuple[AgentEnv, Queue, dict[str, str]],
) -> None:
    env, _, ids = site
    res = env.cli("queue", "release", "--domain", "example.com")
    assert res.returncode == 0, res.stderr
    got = states(env)
    assert [k for k in ids if got[ids[k]][0] == "held"] == ["quota1", "dns"]
    assert env.cli("queue", "release", "--domain", "example.org").stdout.strip() == "released 1 message(s)"
    assert [k for k in ids if states(env)[ids[k]][0] == "held"] == ["quota1"]


def test_release_one_and_all(site: tuple[AgentEnv, Queue, dict[str, str]]) -> None:
    env, q, ids = site
    res = env.cli("queue", "release", ids["dns"].lower())
    assert (res.returncode, res.stdout.strip()) == (0, f"{ids['dns']}: released")
    assert env.cli("queue", "release", ids["fresh"]).stdout.strip() == f"{ids['fresh']}: not held"
    missing = env.cli("queue", "release", "0000000000000000")
    assert missing.returncode != 0 and "no message" in missing.stderr
    both = env.cli("queue", "release", "--all", "--sender", "a@example.com")
    assert both.returncode != 0 and "exactly one" in both.stderr
    assert env.cli("queue", "release", "--all").stdout.strip() == "released 3 message(s)"
    assert all(state == "queued" for state, _ in states(env).values() if state != "deferred")
    state = q.read_state(ids["quota2"])
    assert (state.held_for, state.next_attempt, state.last_error) == ("", 0.0, "")


def test_queue_hold_uses_the_held_state(site: tuple[AgentEnv, Queue, dict[str, str]]) -> None:
    env, q, ids = site
    res = env.cli("queue", "hold", ids["deferred"])
    assert (res.returncode, res.stdout.strip()) == (0, f"{ids['deferred']}: held")
    assert states(env)[ids["deferred"]] == ("held", "held by `relay-agent queue hold`")
    assert q.read_state(ids["deferred"]).held_for == state_file.MANUAL
    again = env.cli("queue", "hold", ids["quota1"])  # held already: keeps its own reason
    assert again.returncode == 0 and "not held" in again.stdout
    assert states(env)[ids["quota1"]] == ("held", QUOTA_REASON)
    assert env.cli("queue", "hold", "0000000000000000").returncode != 0
    assert env.cli("queue", "delete", ids["quota1"]).returncode == 0
    assert ids["quota1"] not in states(env)
