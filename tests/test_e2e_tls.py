"""A relay that cannot be trusted gets no credentials; the mail waits, and says why."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.agent_env import AgentEnv
from tests.support.relay_standin import RelayStandin

MSG = b"From: app@example.com\nTo: t@example.net\nSubject: tls\n\nbody\n"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"starttls": False}, ("starttls",)),
        ({"bad_cert": "self-signed"}, ("certificate",)),
        ({"bad_cert": "wrong-name"}, ("certificate", "hostname", "match")),
    ],
)
def test_untrusted_relay_gets_no_password_and_mail_stays_queued(
    tmp_path: Path,
    relay_standin_factory: Callable[..., RelayStandin],
    kwargs: dict[str, str],
    words: tuple[str, ...],
) -> None:
    relay = relay_standin_factory(**kwargs)
    env = AgentEnv(tmp_path, relay)
    env.start()
    try:
        assert env.sendmail(["-t", "-i"], MSG).returncode == 0
        deadline = time.monotonic() + 15
        listed: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            listed = env.queue_json()
            if listed and listed[0]["state"] == "deferred":
                break
            time.sleep(0.1)
        assert listed and listed[0]["state"] == "deferred", listed
        error = str(listed[0]["last_error"]).lower()
        assert any(w in error for w in words), error
        status = json.loads(env.cli("status", "--json").stdout)
        assert status["last_relay_error"] and any(w in status["last_relay_error"].lower() for w in words)
        assert relay.auth_attempts == 0 and relay.messages == []
        mailq = env.cli("queue", "list").stdout
        assert "t@example.net" in mailq and "(" in mailq  # the reason line under the message
    finally:
        env.stop()
    assert relay.password not in env.log()
