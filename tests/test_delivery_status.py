"""What `queue list`, `mailq` and `status` say about mail that waits: a recipient deferred by a
4xx carries its own reply, and mail held back while the relay cannot be reached says why."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import MAILQ, AgentEnv, wait_until
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(90)

MSG = b"From: app@example.com\nTo: %s\nSubject: test %d\n\nhello %d\n"
SLOW_RETRY = {"queue": {"retry_initial": 60, "retry_max": 120}}  # nothing retries during the test


def msg(to: str, n: int = 0) -> bytes:
    return MSG % (to.encode(), n, n)


def listed_when(agent: AgentEnv, cond: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = agent.queue_json()
        if cond(items) or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_recipient_deferred_by_451_has_its_own_last_error(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    # 4.2.0, not 4.7.x: a 4.7.x reply is push-back (retried at the next slot), not this deferral
    relay_standin.fail_next(451, "4.2.0 greylisted, come back later", stage="rcpt")
    agent = AgentEnv(tmp_path, relay_standin, extra=SLOW_RETRY)
    agent.start()
    try:
        assert agent.sendmail(["-i", "c@example.net", "d@example.net"], msg("c@example.net")).returncode == 0
        items = listed_when(agent, lambda xs: xs and xs[0]["state"] == "deferred")
        assert [x["state"] for x in items] == ["deferred"], items
        rcpts = {r["address"]: r for r in items[0]["recipients"]}
        assert rcpts["c@example.net"]["state"] == "pending"
        assert rcpts["c@example.net"]["last_error"] == "451 4.2.0 greylisted, come back later"
        assert rcpts["d@example.net"] == {"address": "d@example.net", "state": "sent", "last_error": None}
        assert items[0]["last_error"] == "451 4.2.0 greylisted, come back later"
        assert agent.cli("queue", "flush").returncode == 0
        got = relay_standin.wait_for(2, timeout=15)
        assert sorted(r for m in got for r in m.rcpt_tos) == ["c@example.net", "d@example.net"]
        agent.wait_queue_empty()
    finally:
        agent.stop()


def test_mail_held_back_while_the_relay_is_down_says_why(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    agent = AgentEnv(tmp_path, relay_standin, extra=SLOW_RETRY)
    agent.start()
    try:
        assert agent.sendmail(["-i", "a@example.net"], msg("a@example.net", 0)).returncode == 0
        listed_when(agent, lambda xs: xs and xs[0]["state"] == "deferred")
        # the connect backoff now holds back whatever arrives: no attempt, no state file of its own
        for n in (1, 2):
            assert agent.sendmail(["-i", f"b{n}@example.net"], msg(f"b{n}@example.net", n)).returncode == 0
        items = listed_when(agent, lambda xs: len(xs) == 3)
        assert [x["state"] for x in items] == ["deferred"] * 3, items
        suspended = (
            f"delivery temporarily suspended: connect to 127.0.0.1:{relay_standin.port}: Connection refused"
        )
        held = [x for x in items if x["attempts"] == 0]
        assert len(held) == 2
        for x in held:
            assert x["last_error"] == suspended
            assert x["recipients"][0]["last_error"] == suspended
        assert not list((agent.queue_dir / "state").iterdir())[1:]  # only the one tried has a state file
        mailq = subprocess.run([MAILQ], env=agent.env, capture_output=True, text=True, check=True).stdout
        assert mailq.count(f"({suspended})") == 2 and "3 Requests." in mailq
        status = json.loads(agent.cli("status", "--json").stdout)
        assert status["queue"].pop("oldest_seconds") >= 0
        assert status["queue"] == {"queued": 0, "deferred": 3, "held": 0, "failed": 0}
        relay_standin.up()
        assert agent.cli("queue", "flush").returncode == 0
        relay_standin.wait_for(3, timeout=20)
        agent.wait_queue_empty()
        status_file = agent.queue_dir / "status.json"
        wait_until(lambda: json.loads(status_file.read_text())["relay_suspended"] is None)
    finally:
        agent.stop()


def test_a_stopped_daemons_suspension_is_not_shown(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    agent = AgentEnv(tmp_path, relay_standin, extra=SLOW_RETRY)
    agent.start()
    assert agent.sendmail(["-i", "a@example.net"], msg("a@example.net", 0)).returncode == 0
    listed_when(agent, lambda xs: xs and xs[0]["state"] == "deferred")
    assert agent.sendmail(["-i", "b@example.net"], msg("b@example.net", 1)).returncode == 0
    listed_when(agent, lambda xs: len(xs) == 2)
    agent.stop()
    assert json.loads((agent.queue_dir / "status.json").read_text())["relay_suspended"]
    items = agent.queue_json()
    assert sorted(x["state"] for x in items) == ["deferred", "queued"]
    assert [x["last_error"] for x in items if x["state"] == "queued"] == [None]
