"""The whole path with real processes: `sendmail` → daemon → relay stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.agent_env import MAILQ, AgentEnv, UnixSMTP, wait_until
from tests.support.relay_standin import RelayStandin

MSG = b"From: app@example.com\nTo: %s\nSubject: test %d\n\nhello %d\n"


def msg(to: str = "a@example.net", n: int = 0) -> bytes:
    return MSG % (to.encode(), n, n)


def test_daemon_up_delivers_signed(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    agent.start()
    r = agent.sendmail(["-t", "-i"], msg())
    assert r.returncode == 0, r.stderr
    got = relay_standin.wait_for(1)
    m = got[0]
    assert list(m.rcpt_tos) == ["a@example.net"]
    assert m.tls and m.auth_user == relay_standin.username
    assert m.data.startswith(b"DKIM-Signature:")
    assert b"\r\nhello 0\r\n" in m.data
    agent.wait_queue_empty()
    assert agent.stop() == 0
    assert "status=sent" in agent.log()


def test_daemon_down_then_up(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    r = agent.sendmail(["-t", "-i"], msg())
    assert r.returncode == 0, r.stderr
    listed = agent.queue_json()
    assert [x["state"] for x in listed] == ["queued"]
    assert listed[0]["recipients"][0]["address"] == "a@example.net"
    mailq = subprocess.run([MAILQ], env=agent.env, capture_output=True, text=True, check=True).stdout
    assert "a@example.net" in mailq and "1 Request." in mailq
    assert relay_standin.messages == []
    agent.start()
    relay_standin.wait_for(1)
    agent.wait_queue_empty()


def test_relay_down_then_flush(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    agent.start()
    assert agent.sendmail(["-i", "b@example.net"], msg("b@example.net")).returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = agent.queue_json()
        if listed and listed[0]["state"] == "deferred":
            break
        time.sleep(0.1)
    assert listed[0]["state"] == "deferred" and listed[0]["last_error"]
    assert listed[0]["next_attempt"] is not None
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["running"] is True and status["queue"]["deferred"] == 1
    assert status["last_relay_error"]
    relay_standin.up()
    r = agent.cli("queue", "flush")
    assert r.returncode == 0, r.stderr
    relay_standin.wait_for(1, timeout=10)
    agent.wait_queue_empty()


def test_4xx_defers_then_delivers(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.fail_next(451, stage="rcpt")
    agent.start()
    assert agent.sendmail(["-i", "c@example.net"], msg("c@example.net")).returncode == 0
    got = relay_standin.wait_for(1, timeout=15)  # retry_initial = 1 s
    assert list(got[0].rcpt_tos) == ["c@example.net"]
    agent.wait_queue_empty()
    # the queue file goes right after the relay's 250, the log line just after it
    wait_until(lambda: "status=sent" in agent.log(), timeout=5)
    assert "status=deferred" in agent.log()


def test_5xx_for_one_of_three_bounces_only_that_one(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.reject_rcpt("bad@example.net", 550, "5.1.1 no such user")
    agent.start()
    m = b"From: app@example.com\nTo: ok1@example.net, bad@example.net, ok2@example.net\nSubject: s\n\nbody\n"
    assert agent.sendmail(["-t", "-i", "-f", "app@example.com"], m).returncode == 0
    got = relay_standin.wait_for(2, timeout=15)
    time.sleep(1.0)
    got = relay_standin.messages
    originals = [g for g in got if g.mail_from == "app@example.com"]
    bounces = [g for g in got if g.mail_from in ("", "<>")]
    assert len(originals) == 1 and sorted(originals[0].rcpt_tos) == ["ok1@example.net", "ok2@example.net"]
    assert len(bounces) == 1 and list(bounces[0].rcpt_tos) == ["app@example.com"]
    dsn = bounces[0].data
    assert b"report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822; bad@example.net" in dsn and b"550 5.1.1 no such user" in dsn
    assert b"From: Mail Delivery System <MAILER-DAEMON@example.com>" in dsn
    assert dsn.startswith(b"DKIM-Signature:")
    listed = agent.queue_json()
    assert len(listed) == 1 and listed[0]["state"] == "failed"
    states = {r["address"]: r["state"] for r in listed[0]["recipients"]}
    assert states == {"ok1@example.net": "sent", "bad@example.net": "failed", "ok2@example.net": "sent"}


def test_expired_message_bounces(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin, extra={"queue": {"max_age": 2}})
    relay_standin.down()
    env.start()
    try:
        assert (
            env.sendmail(["-i", "-f", "app@example.com", "d@example.net"], msg("d@example.net")).returncode
            == 0
        )
        time.sleep(3.5)
        relay_standin.up()
        env.cli("queue", "flush")
        got = relay_standin.wait_for(1, timeout=10)
        assert got[0].mail_from in ("", "<>") and list(got[0].rcpt_tos) == ["app@example.com"]
        assert b"expired" in got[0].data
        time.sleep(0.5)
        assert not [g for g in relay_standin.messages if g.mail_from == "app@example.com"]
    finally:
        env.stop()


def test_sigterm_loses_nothing(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.down()
    agent.start()
    for i in range(20):
        assert agent.sendmail(["-i", f"r{i}@example.net"], msg(f"r{i}@example.net", i)).returncode == 0
    t0 = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - t0 < 10
    assert len(agent.queue_json()) == 20
    relay_standin.up()
    agent.start()
    relay_standin.wait_for(20, timeout=30)
    agent.wait_queue_empty()
    assert sorted(m.rcpt_tos[0] for m in relay_standin.messages) == sorted(
        f"r{i}@example.net" for i in range(20)
    )


def test_kill9_mid_delivery_redelivers_everything(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin, rate=200)
    relay_standin.down()
    env.start()
    n = 200
    for i in range(n):
        assert env.sendmail(["-i", f"k{i}@example.net"], msg(f"k{i}@example.net", i)).returncode == 0
    relay_standin.up()
    env.cli("queue", "flush")
    relay_standin.wait_for(40, timeout=30)
    env.kill9()
    before = len(relay_standin.messages)
    assert before < n, "delivery finished before the kill; the test proves nothing"
    env.start()
    env.wait_queue_empty(timeout=60)
    env.stop()
    got = [m.rcpt_tos[0] for m in relay_standin.messages]
    assert set(got) == {f"k{i}@example.net" for i in range(n)}
    duplicates = len(got) - n
    # at most the in-flight window (limits.connections = 2 transactions) can repeat
    assert 0 <= duplicates <= 2, duplicates


def test_sighup_reloads_aliases(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    agent.start()
    with UnixSMTP(str(agent.socket)) as smtp:
        smtp.ehlo()
        smtp.mail("app@example.com")
        code, reply = smtp.rcpt("newname")
        assert code == 550 and b"unknown local recipient" in reply
    agent.sections["aliases"]["newname"] = "new@example.net"
    agent.write_config()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reloaded" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    with UnixSMTP(str(agent.socket)) as smtp:
        smtp.sendmail("app@example.com", ["newname"], msg("x"))
    assert list(relay_standin.wait_for(1)[0].rcpt_tos) == ["new@example.net"]


def test_notify_never_suppresses_the_bounce_and_failed_mail_expires(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    relay_standin.reject_rcpt("gone@example.net", 550, "5.1.1 no such user")
    env = AgentEnv(tmp_path, relay_standin, extra={"queue": {"failed_keep": 2}})
    env.start()
    try:
        m = b"From: app@example.com\nTo: gone@example.net\nSubject: s\n\nbody\n"
        assert (
            env.sendmail(["-i", "-f", "app@example.com", "-N", "never", "gone@example.net"], m).returncode
            == 0
        )
        deadline = time.monotonic() + 10
        while "status=bounced" not in env.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = env.queue_json()
        assert [x["state"] for x in listed] == ["failed"]
        assert listed[0]["recipients"][0]["last_error"] == "550 5.1.1 no such user"
        time.sleep(3.5)  # failed_keep = 2 s
        assert env.queue_json() == []
        assert relay_standin.messages == []  # -N never: no DSN, and nothing else went out
        assert "bounces disabled for this message" in env.log()
    finally:
        env.stop()


def test_a_refused_bounce_stays_failed_and_is_never_bounced(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    relay_standin.reject_rcpt("gone@example.net", 550, "5.1.1 no such user")
    relay_standin.reject_rcpt("app@example.com", 550, "5.1.1 sender mailbox gone too")
    env = AgentEnv(tmp_path, relay_standin)
    env.start()
    try:
        m = b"From: app@example.com\nTo: gone@example.net\nSubject: s\n\nbody\n"
        assert env.sendmail(["-i", "-f", "app@example.com", "gone@example.net"], m).returncode == 0
        deadline = time.monotonic() + 10
        listed: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            listed = env.queue_json()
            if len(listed) == 2 and all(x["state"] == "failed" for x in listed):
                break
            time.sleep(0.1)
        senders = sorted(str(x["sender"]) for x in listed)
        assert senders == ["", "app@example.com"], listed  # the message and its refused bounce
        time.sleep(1.0)
        assert len(env.queue_json()) == 2  # no bounce of the bounce
        assert "not bouncing: null sender" in env.log()
    finally:
        env.stop()


def test_queue_full_is_452_over_smtp(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin, extra={"queue": {"min_free": 1 << 62}})
    env.start()
    try:
        code, reply = env.smtp_data(b"From: app@example.com\r\nSubject: s\r\n\r\nbody\r\n")
        assert code == 452 and b"space" in reply
        r = env.sendmail(["-i", "a@example.net"], b"From: app@example.com\n\nbody\n")
        assert r.returncode == 75 and len(r.stderr.splitlines()) == 1
        assert not any((env.queue_dir / "msg").iterdir())
        assert not [n for n in os.listdir(env.maildrop) if not n.startswith(".")]  # 75: the caller retries
    finally:
        env.stop()


def test_sigterm_lets_the_transaction_in_flight_finish(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    relay_standin.stall_next(1.5, stage="data")  # the relay is slow to answer the final "."
    agent.start()
    assert (
        agent.sendmail(
            ["-i", "-f", "app@example.com", "slow@example.net"], msg("slow@example.net")
        ).returncode
        == 0
    )
    deadline = time.monotonic() + 10
    while not relay_standin.mail_from_times and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # inside DATA now
    t0 = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - t0 < 10
    assert len(relay_standin.messages) == 1
    assert agent.queue_json() == []  # the 250 was recorded before exit: nothing to send again
    agent.start()
    time.sleep(1.0)
    assert len(relay_standin.messages) == 1


def test_full_queue_leaves_maildrop_files_for_later(agent: AgentEnv, relay_standin: RelayStandin) -> None:
    assert (
        agent.sendmail(
            ["-i", "-f", "app@example.com", "later@example.net"], msg("later@example.net")
        ).returncode
        == 0
    )
    agent.sections["queue"]["min_free"] = 1 << 62  # the queue's file system is "full" now
    agent.write_config()
    agent.start()
    deadline = time.monotonic() + 10
    while "left for later" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "left for later" in agent.log()
    assert [n for n in os.listdir(agent.maildrop) if not n.startswith(".")]  # still there, not quarantined
    assert not any((agent.queue_dir / "corrupt").iterdir())
    agent.sections["queue"]["min_free"] = 0
    agent.write_config()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    got = relay_standin.wait_for(1, timeout=10)
    assert list(got[0].rcpt_tos) == ["later@example.net"]
    agent.wait_queue_empty()


def test_a_bounce_the_full_queue_cannot_take_is_sent_later(
    agent: AgentEnv, relay_standin: RelayStandin
) -> None:
    relay_standin.reject_rcpt("gone@example.net", 550, "5.1.1 no such user")
    relay_standin.down()
    agent.start()
    m = b"From: app@example.com\nTo: gone@example.net\nSubject: s\n\nbody\n"
    assert agent.sendmail(["-i", "-f", "app@example.com", "gone@example.net"], m).returncode == 0
    wait_until(lambda: any((agent.queue_dir / "msg").iterdir()))  # root's mail: picked up from the maildrop

    def reload(min_free: int) -> None:
        agent.sections["queue"]["min_free"] = min_free
        agent.write_config()
        assert agent.proc is not None
        before = agent.log().count("reloaded")
        agent.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while agent.log().count("reloaded") == before and time.monotonic() < deadline:
            time.sleep(0.05)

    reload(1 << 62)  # the queue's file system is "full" when the 550 comes back
    relay_standin.up()
    agent.cli("queue", "flush")
    deadline = time.monotonic() + 10
    while "not queued yet" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "not queued yet" in agent.log()
    assert relay_standin.messages == []
    state = next((agent.queue_dir / "state").iterdir()).read_text()
    assert "bounce 0" in state  # the debt is on disk: a restart would not lose it
    agent.stop()
    agent.sections["queue"]["min_free"] = 0
    agent.write_config()
    agent.start()  # after a restart, with room again, the bounce goes out
    got = relay_standin.wait_for(1, timeout=15)
    assert got[0].mail_from in ("", "<>") and list(got[0].rcpt_tos) == ["app@example.com"]
    assert b"Final-Recipient: rfc822; gone@example.net" in got[0].data
    assert "bounce " not in next((agent.queue_dir / "state").iterdir()).read_text()
