"""Relay faults decided inside the SMTP session: every message still arrives exactly once.

The real daemon (a subprocess, small relay.timeout / relay.data_timeout, one-second retries)
against tests/support/fault_relay.py, which fails at a scripted stage of a real STARTTLS +
AUTH session. Each test runs a script of faults over a handful of messages and then checks
what the relay accepted: nothing lost, nothing twice, except after "drop after the final dot
before the 250", where the relay kept a message whose acknowledgement never reached us: one
duplicate per such fault is the in-flight window no SMTP client can close.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_env import AgentEnv, UnixSMTP
from tests.support.fault_relay import Fault, FaultRelay

TIMEOUT = 1.0  # relay.timeout: a command's reply
DATA_TIMEOUT = 2.0  # relay.data_timeout: the reply to the final dot
TOKEN = re.compile(rb"X-Fault-Token: (\S+)")


def start(tmp: Path, relay: FaultRelay) -> AgentEnv:
    env = AgentEnv(
        tmp,
        relay,
        rate=1000,
        extra={
            "relay": {"timeout": TIMEOUT, "data_timeout": DATA_TIMEOUT},
            "queue": {"retry_initial": 1, "retry_max": 1},
        },
    )
    env.start()
    return env


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, list[AgentEnv]]]:
    made: list[AgentEnv] = []
    yield tmp_path, made
    for env in made:
        if env.proc is not None:
            env.stop()


def submit(env: AgentEnv, tokens: list[str]) -> None:
    """Over SMTP on the daemon's socket, one session: each message has its own token."""
    with UnixSMTP(str(env.socket)) as smtp:
        for token in tokens:
            body = f"From: app@example.com\r\nTo: f@example.net\r\nX-Fault-Token: {token}\r\n\r\n{token}\r\n"
            assert smtp.sendmail("app@example.com", ["f@example.net"], body.encode()) == {}


def arrivals(relay: FaultRelay) -> Counter[str]:
    got: Counter[str] = Counter()
    for m in relay.messages:
        got.update(t.decode() for t in TOKEN.findall(m.data))
    return got


def run_script(site: tuple[Path, list[AgentEnv]], faults: list[Fault], n: int) -> tuple[Counter[str], str]:
    """n messages through a relay that runs `faults`; what arrived, and the daemon's log."""
    tmp, made = site
    with FaultRelay(*faults) as relay:
        env = start(tmp, relay)
        made.append(env)
        tokens = [f"t{i:03d}" for i in range(n)]
        submit(env, tokens)
        deadline = time.monotonic() + 20 + 3 * len(faults)
        while time.monotonic() < deadline:
            if relay.pending == [] and set(arrivals(relay)) >= set(tokens):
                break
            time.sleep(0.05)
        env.wait_queue_empty(timeout=max(1.0, deadline - time.monotonic()))
        got = arrivals(relay)
        assert relay.pending == [], f"faults that never fired: {relay.pending}"
        assert [str(f) for f in relay.fired] == [str(f) for f in faults]
        assert set(got) == set(tokens), f"lost: {sorted(set(tokens) - set(got))}"
        env.stop()
        return got, env.log()


def duplicates(got: Counter[str]) -> int:
    return sum(c - 1 for c in got.values())


def test_421_at_every_stage_loses_nothing_and_repeats_nothing(site: tuple[Path, list[AgentEnv]]) -> None:
    stages = ("greeting", "ehlo", "auth", "mail", "rcpt", "data", "dot")
    got, log = run_script(site, [Fault(s, "421") for s in stages], n=4)
    assert duplicates(got) == 0, got
    assert log.count("status=deferred") >= len(stages)
    assert "4.3.2 fault relay: 421 at dot" in log  # the relay's own reply to the final dot, logged


def test_dropped_connections_repeat_only_what_the_relay_kept(site: tuple[Path, list[AgentEnv]]) -> None:
    faults = [Fault("body", "drop"), Fault("dot", "drop"), Fault("greeting", "drop"), Fault("dot", "drop")]
    got, _ = run_script(site, faults, n=4)
    dot_drops = sum(1 for f in faults if f.stage == "dot")
    # lost = 0 (run_script); a mid-DATA drop must not count as delivered, a drop after the dot may
    assert duplicates(got) <= dot_drops, got


def test_stalls_past_timeout_and_data_timeout(site: tuple[Path, list[AgentEnv]]) -> None:
    faults = [
        Fault("mail", "stall", seconds=TIMEOUT * 3),  # past relay.timeout: deferred
        Fault("dot", "stall", seconds=DATA_TIMEOUT * 2),  # past relay.data_timeout: deferred
        Fault("dot", "stall", seconds=(TIMEOUT + DATA_TIMEOUT) / 2),  # within data_timeout: sent
    ]
    got, log = run_script(site, faults, n=3)
    assert duplicates(got) == 0, got
    # only the first two gave up: the final dot's reply is waited for data_timeout, not timeout
    assert log.count("status=deferred") == 2, log


def test_hangs_at_tls_greeting_ehlo_auth_mail_and_mid_data(site: tuple[Path, list[AgentEnv]]) -> None:
    stages = ("tls", "greeting", "ehlo", "auth", "mail", "body")
    got, log = run_script(site, [Fault(s, "hang") for s in stages], n=3)
    assert duplicates(got) == 0, got
    assert log.count("status=deferred") >= len(stages)
