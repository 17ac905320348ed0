"""The daemon and the relay-agent CLI as a user and systemd see them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.agent_env import RELAY_AGENT, AgentEnv, UnixSMTP
from tests.support.relay_standin import RelayStandin

MSG = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: s\r\n\r\nbody\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY_AGENT, *args], capture_output=True, text=True, env=env, timeout=60)


def test_config_flag_before_and_after_subcommand(agent: AgentEnv) -> None:
    clean = {k: v for k, v in os.environ.items() if k != "RELAY_AGENT_CONFIG"}
    for args in (
        ("--config", str(agent.config), "config", "check"),
        ("config", "check", "--config", str(agent.config)),
    ):
        r = run(*args, env=clean)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["queue"]["path"] == str(agent.queue_dir)


def test_missing_named_config_is_78_never_a_fallback(tmp_path: Path) -> None:
    r = run("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert r.returncode == 78
    assert r.stderr.strip().count("\n") == 0 and "nope.toml" in r.stderr
    env = dict(os.environ, RELAY_AGENT_CONFIG=str(tmp_path / "nope.toml"))
    r = run("status", env=env)
    assert r.returncode == 78 and "nope.toml" in r.stderr


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[relay]\nport = "x"\n', "relay.port"),
        ('[relay]\ntls = "none"\n', "relay.tls"),
        ("[queue]\nretry_initial = 0\n", "queue.retry_initial"),
        ('[listen]\nsmtp = "0.0.0.0:25"\n', "listen.smtp"),
        ('[policy]\nunsigned = "maybe"\n', "policy.unsigned"),
        ("[limits]\nbogus = 1\n", "limits.bogus"),
        ("[relay\n", "TOML"),
    ],
)
def test_malformed_config_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    for args in (("config", "check"), ("run",)):
        r = run("--config", str(cfg), *args)
        assert r.returncode == 78, (args, r.stderr)
        assert key in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_config_check_never_shows_the_password(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    r = agent.cli("config", "check")
    assert r.returncode == 0
    assert relay_standin.password not in r.stdout + r.stderr


def test_ready_notification(agent: AgentEnv, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(15)
        proc = subprocess.Popen(
            [RELAY_AGENT, "run"], env=dict(agent.env, NOTIFY_SOCKET=path), stderr=subprocess.DEVNULL
        )
        try:
            got = s.recv(200)
            assert b"READY=1" in got
            assert agent.listening(), "READY=1 must come only once the socket listens"
        finally:
            proc.terminate()
            assert proc.wait(12) == 0
        assert b"STOPPING=1" in s.recv(200)


def test_hold_release_delete_show(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    agent.start()
    for to in ("h1@example.net", "h2@example.net", "h3@example.net"):
        assert agent.sendmail(["-i", "-f", "app@example.com", to], MSG).returncode == 0
    ids = {x["recipients"][0]["address"]: x["id"] for x in agent.queue_json()}
    assert len(ids) == 3
    shown = agent.cli("queue", "show", ids["h1@example.net"])
    assert shown.returncode == 0 and "DKIM-Signature:" in shown.stdout and "body" in shown.stdout
    assert agent.cli("queue", "hold", ids["h1@example.net"]).returncode == 0
    assert agent.cli("queue", "delete", ids["h2@example.net"]).returncode == 0
    assert agent.cli("queue", "delete", "0000000000000000").returncode != 0
    relay_standin.up()
    agent.cli("queue", "flush")
    got = relay_standin.wait_for(1, timeout=10)
    time.sleep(1.0)
    assert [list(m.rcpt_tos) for m in relay_standin.messages] == [["h3@example.net"]]
    listed = agent.queue_json()
    assert [x["id"] for x in listed] == [ids["h1@example.net"]]
    assert agent.cli("queue", "release", ids["h1@example.net"]).returncode == 0
    got = relay_standin.wait_for(2, timeout=10)
    assert list(got[1].rcpt_tos) == ["h1@example.net"]
    assert agent.cli("queue", "delete", "--sender", "nobody@example.com").stdout.startswith("deleted 0")


def test_rate_is_paced_evenly_over_few_connections(tmp_path: Path, relay_standin: RelayStandin) -> None:
    rate, n = 20.0, 40
    env = AgentEnv(tmp_path, relay_standin, rate=rate)
    relay_standin.down()
    env.start()
    try:
        for i in range(n):
            assert env.sendmail(["-i", "-f", "app@example.com", f"p{i}@example.net"], MSG).returncode == 0
        relay_standin.up()
        env.cli("queue", "flush")
        relay_standin.wait_for(n, timeout=30)
    finally:
        env.stop()
    times = sorted(relay_standin.mail_from_times)
    assert len(times) == n
    # at most rate*T + 1 MAIL FROMs in any window of T >= 1 s
    for i, start in enumerate(times):
        for window in (1.0, 1.5):
            inside = sum(1 for t in times[i:] if t - start < window)
            assert inside <= rate * window + 1, (window, inside)
    overall = (n - 1) / (times[-1] - times[0])
    assert overall == pytest.approx(rate, rel=0.1)
    assert relay_standin.connections <= 2  # limits.connections: reused, not one per message


def test_socket_refusals(agent: AgentEnv) -> None:
    agent.start()
    with UnixSMTP(str(agent.socket)) as smtp:
        smtp.ehlo()
        assert smtp.mail("app@example.com")[0] == 250
        assert smtp.rcpt("a@example.net")[0] == 250
        code, reply = smtp.data(b"From: x@unsigned.example\r\nSubject: s\r\n\r\nbody\r\n")
        assert code == 550 and b"unsigned.example" in reply and b"dkim keygen" in reply
        smtp.rset()
        smtp.mail("app@example.com")
        smtp.rcpt("a@example.net")
        code, reply = smtp.data(b"From: app@example.com\r\n\r\nnul\0byte\r\n")
        assert code == 554 and b"NUL" in reply
        code, reply = smtp.docmd("VRFY", "root")
        assert code == 252


def test_size_limit_over_socket(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin, extra={"limits": {"max_message_size": 1000}})
    env.start()
    try:
        code, _ = env.smtp_data(MSG + b"x" * 2000 + b"\r\n")
        assert code == 552
        r = env.sendmail(["-i", "a@example.net"], MSG + b"x" * 2000 + b"\n")
        assert r.returncode == 65 and len(r.stderr.splitlines()) == 1
    finally:
        env.stop()


def test_loopback_listener_and_metrics(tmp_path: Path, relay_standin: RelayStandin) -> None:
    import smtplib

    smtp_port, metrics_port = free_port(), free_port()
    env = AgentEnv(
        tmp_path,
        relay_standin,
        extra={
            "listen": {"smtp": f"127.0.0.1:{smtp_port}"},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        },
    )
    env.start()
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
            smtp.sendmail("app@example.com", ["tcp@example.net"], MSG)
        relay_standin.wait_for(1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            body = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            )
            if 'relay_agent_messages_total{account="default",outcome="sent"} 1.0' in body:
                break
            time.sleep(0.1)
        assert 'relay_agent_messages_total{account="default",outcome="queued"} 1.0' in body
        assert 'relay_agent_messages_total{account="default",outcome="sent"} 1.0' in body
        assert 'relay_agent_messages_total{account="default",outcome="bounced"} 0.0' in body
        status = json.loads(env.cli("status", "--json").stdout)
        assert status["running"] is True and status["counters"]["sent"] == 1
        assert status["queue"] == {"queued": 0, "deferred": 0, "held": 0, "failed": 0, "oldest_seconds": 0}
    finally:
        env.stop()
    status = json.loads(env.cli("status", "--json").stdout)
    assert status["running"] is False


def test_corrupt_queue_file_is_quarantined_and_daemon_runs(
    agent: AgentEnv, relay_standin: RelayStandin
) -> None:
    agent.start()
    bad = agent.queue_dir / "msg" / "0EA0000000000ABC"
    bad.write_bytes(b"RELAY-AGENT-QUEUE 1\ncreated 1\nsender a@b\nrcpt c@d\nsize 999\n\ntruncated")
    agent.cli("queue", "flush")
    assert agent.sendmail(["-t", "-i"], MSG).returncode == 0
    relay_standin.wait_for(1)
    deadline = time.monotonic() + 5
    while bad.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not bad.exists()
    assert [p.name[:16] for p in (agent.queue_dir / "corrupt").iterdir()] == ["0EA0000000000ABC"]
    assert "moved to corrupt/" in agent.log()


def test_watchdog_pings(agent: AgentEnv, tmp_path: Path) -> None:
    path = str(tmp_path / "wd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        env = dict(agent.env, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
        proc = subprocess.Popen([RELAY_AGENT, "run"], env=env, stderr=subprocess.DEVNULL)
        try:
            seen = [s.recv(200) for _ in range(4)]
        finally:
            proc.terminate()
            assert proc.wait(12) == 0
    assert b"READY=1" in seen[0]
    assert sum(b"WATCHDOG=1" in m for m in seen) >= 2  # every WATCHDOG_USEC / 2


def test_dns_problems_are_logged_at_start_and_never_block_mail(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    from tests.support.dnsmasq import DnsServer

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with DnsServer({"example.com": ["v=spf1 include:elastx.email -all"]}) as dns:
        env = AgentEnv(tmp_path / "a", relay_standin, extra={"dns": {"nameserver": dns.nameserver}})
        env.start()
        try:
            assert env.sendmail(["-t", "-i"], MSG).returncode == 0
            relay_standin.wait_for(1)
            deadline = time.monotonic() + 15
            while "dns: example.com dmarc FAIL" not in env.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            log = env.log()
            assert "dns: example.com token FAIL" in log and "publish: example.com. IN TXT" in log
            assert "dns: example.com dmarc FAIL" in log
            assert "dns: example.com spf" not in log  # it passes: only failures are logged
        finally:
            env.stop()
    # a nameserver that never answers: the daemon starts and delivers all the same
    relay_standin.clear()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        env = AgentEnv(
            tmp_path / "b", relay_standin, extra={"dns": {"nameserver": f"127.0.0.1:{dead.getsockname()[1]}"}}
        )
        env.start()
        try:
            assert env.sendmail(["-t", "-i"], MSG).returncode == 0
            relay_standin.wait_for(1)
        finally:
            env.stop()
