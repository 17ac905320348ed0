"""Submitter quotas through the real daemon, the real `sendmail` (as `nobody`, through setpriv, and
as root) and the relay stand-in: over quota, mail is held (accepted, kept, sent once released) or
refused (452 4.7.1 on SMTP, exit 75 with one line from sendmail, nothing in the maildrop); what
comes through the maildrop was accepted already and is held whatever over_quota says."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_env import MAILQ, SENDMAIL, AgentEnv, UnixSMTP, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOBODY_REASON = "held: user nobody is over its quota of 5/min messages ([quotas])"


def message(tag: str) -> bytes:
    return f"From: app@example.com\nTo: {tag}@example.net\nSubject: {tag}\n\nhello\n".encode()


def sendmail(site: AgentEnv, tag: str, nobody: bool = True) -> subprocess.CompletedProcess[bytes]:
    cmd = [*AS_NOBODY, SENDMAIL, "-t", "-i"] if nobody else [SENDMAIL, "-t", "-i"]
    return subprocess.run(cmd, input=message(tag), env=site.env, capture_output=True, cwd="/", timeout=30)


@pytest.fixture
def site(request: pytest.FixtureRequest) -> Iterator[AgentEnv]:
    """A daemon with [quotas] and over_quota from the test's parameter; nobody can reach it."""
    quotas, over_quota = request.param
    with traversable_tmp("relay-agent-quota-") as root, RelayStandin() as relay:
        env = AgentEnv(root, relay, extra={"quotas": quotas, "limits": {"over_quota": over_quota}})
        env.start()
        try:
            yield env
        finally:
            env.stop()


def delivered(site: AgentEnv) -> list[str]:
    assert site.relay is not None
    return sorted(r for m in site.relay.messages for r in m.rcpt_tos)


@pytest.mark.parametrize("site", [({"nobody": "5/min"}, "hold")], indirect=True)
def test_over_quota_is_held_then_released_and_delivered(site: AgentEnv) -> None:
    tags = [f"q{i}" for i in range(8)]
    for tag in tags:
        res = sendmail(site, tag)
        assert (res.returncode, res.stderr) == (0, b""), res.stderr  # accepted: durably queued
    assert site.relay is not None
    site.relay.wait_for(5, timeout=15)
    wait_until(lambda: len([x for x in site.queue_json() if x["state"] == "held"]) == 3, 10)
    time.sleep(0.5)  # room for a wrong sixth delivery to show up
    assert delivered(site) == [f"q{i}@example.net" for i in range(5)]
    listed = site.queue_json()
    assert [(x["state"], x["last_error"]) for x in listed] == [("held", NOBODY_REASON)] * 3
    assert sorted(x["recipients"][0]["address"] for x in listed) == [f"q{i}@example.net" for i in (5, 6, 7)]
    mailq = subprocess.run([MAILQ], env=site.env, capture_output=True, text=True, timeout=30).stdout
    assert sum(1 for line in mailq.splitlines() if line[16:18] == "! ") == 3
    assert mailq.count(f"({NOBODY_REASON})") == 3
    assert site.log().count("quota: user nobody is over its quota of 5/min") == 1  # once per window
    res = site.cli("queue", "release", "--all")
    assert (res.returncode, res.stdout.strip()) == (0, "released 3 message(s)")
    site.relay.wait_for(8, timeout=10)  # at once: the release flushed the running daemon
    site.wait_queue_empty(10)
    assert delivered(site) == [f"{tag}@example.net" for tag in tags]  # each exactly once


@pytest.mark.parametrize("site", [({"nobody": "2/min", "root": "1/min"}, "refuse")], indirect=True)
def test_refuse_is_an_answer_452_and_exit_75(site: AgentEnv) -> None:
    for tag in ("r0", "r1"):
        assert sendmail(site, tag).returncode == 0
    res = sendmail(site, "r2")
    assert res.returncode == 75
    assert res.stderr.decode().splitlines() == [
        "sendmail: 452 4.7.1 user nobody is over its quota of 2/min messages; try again later"
    ]
    wait_until(lambda: delivered(site) == ["r0@example.net", "r1@example.net"], 10)
    assert not [n for n in site.maildrop.iterdir() if not n.name.startswith(".")]  # r2: no fall-back
    # SMTP on the socket, as root (SO_PEERCRED): two sessions pass MAIL FROM with room for one;
    # the one whose DATA comes second is refused after it, and a third is refused at MAIL FROM
    with UnixSMTP(str(site.socket)) as a, UnixSMTP(str(site.socket)) as b:
        for s in (a, b):
            s.ehlo()
            assert s.mail("app@example.com")[0] == 250 and s.rcpt("s1@example.net")[0] == 250
        assert a.data(message("s1"))[0] == 250
        code, text = b.data(message("s2"))
        assert (code, text) == (452, b"4.7.1 user root is over its quota of 1/min messages; try again later")
    with UnixSMTP(str(site.socket)) as c:
        c.ehlo()
        code, text = c.mail("app@example.com")
        assert (code, text) == (452, b"4.7.1 user root is over its quota of 1/min messages; try again later")
    # root's sendmail writes the maildrop: accepted (exit 0) before the daemon saw it, so held
    res = sendmail(site, "m1", nobody=False)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: [x["state"] for x in site.queue_json()] == ["held"], 10)
    [held] = site.queue_json()
    assert held["last_error"] == "held: user root is over its quota of 1/min messages ([quotas])"
    assert site.relay is not None
    wait_until(lambda: delivered(site) == ["r0@example.net", "r1@example.net", "s1@example.net"], 10)
    assert site.cli("queue", "release", "--sender", "nobody@example.com").stdout.startswith("released 0")
    assert site.cli("queue", "release", held["id"]).returncode == 0
    site.wait_queue_empty(10)
    assert "m1@example.net" in delivered(site)


def test_no_quotas_counts_nobody(tmp_path: Path, relay_standin: RelayStandin) -> None:
    """Without [quotas] nothing is held or refused (the default every existing install has)."""
    site = AgentEnv(tmp_path, relay_standin, extra={"limits": {"over_quota": "refuse"}})
    site.start()
    try:
        for i in range(6):
            assert site.smtp_data(message(f"n{i}"), rcpt=f"n{i}@example.net")[0] == 250
        relay_standin.wait_for(6, timeout=10)
    finally:
        site.stop()
    assert "quota" not in site.log()


def test_the_loopback_listener_is_the_smtp_user(tmp_path: Path, relay_standin: RelayStandin) -> None:
    with socket.socket() as probe:  # a free port for the listener (the daemon cannot report one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = {
        "quotas": {"smtp": "1/min"},
        "limits": {"over_quota": "refuse"},
        "listen": {"smtp": f"127.0.0.1:{port}"},
    }
    site = AgentEnv(tmp_path, relay_standin, extra=extra)
    site.start()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as tcp:
            tcp.sendmail("app@example.com", ["t1@example.net"], message("t1"))
            code, text = tcp.mail("app@example.com")
        assert (code, text) == (452, b"4.7.1 user smtp is over its quota of 1/min messages; try again later")
        assert site.smtp_data(message("u1"), rcpt="u1@example.net")[0] == 250  # the socket: root, no quota
        relay_standin.wait_for(2, timeout=10)
    finally:
        site.stop()
