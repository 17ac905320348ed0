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


def test_missing_ca_file_defers_and_backs_off(tmp_path: Path, relay_standin: RelayStandin) -> None:
    """relay.ca_file gone after start (a package removed it, a typo after SIGHUP): a relay
    error like any other, not a traceback per message retried in a tight loop."""
    env = AgentEnv(tmp_path, relay_standin)
    ca_copy = tmp_path / "ca.pem"
    ca_copy.write_bytes(Path(relay_standin.ca_file).read_bytes())
    config = env.config.read_text().replace(relay_standin.ca_file, str(ca_copy))
    env.config.write_text(config)
    env.start()
    try:
        ca_copy.unlink()
        for i in range(20):
            assert env.sendmail(["-t", "-i"], MSG.replace(b"tls", f"tls {i}".encode())).returncode == 0
        deadline = time.monotonic() + 15
        listed: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            listed = env.queue_json()
            if any(m["state"] == "deferred" for m in listed):
                break
            time.sleep(0.1)
        # the first attempt defers; the others wait out the relay backoff without being read
        assert len(listed) == 20 and {m["state"] for m in listed} <= {"queued", "deferred"}, listed
        deferred = [m for m in listed if m["state"] == "deferred"]
        assert deferred and all("cannot load relay.ca_file" in str(m["last_error"]) for m in deferred)
        status = json.loads(env.cli("status", "--json").stdout)
        assert "cannot load relay.ca_file" in status["last_relay_error"]
        assert env.proc is not None
        cpu0 = _cpu_seconds(env.proc.pid)
        time.sleep(3)  # past retry_initial (1 s): the relay backoff holds, nothing spins
        assert _cpu_seconds(env.proc.pid) - cpu0 < 0.5
    finally:
        env.stop()
    assert "Traceback" not in env.log()
    assert relay_standin.messages == []


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100
