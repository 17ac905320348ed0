"""The sender-domain watch in the real daemon, against a real dnsmasq and the relay stand-in: a DKIM
record removed while the daemon runs holds that domain's mail (queued and new) with the reason,
another domain's mail flows; the record back, the held mail is released and delivered by itself;
a nameserver that cannot be asked holds nothing; `status --json` shows every domain's verdict."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.delivery.domain_hold import held_on_disk, hold_queued
from agent.dkim import key_files
from agent.dns.token import token_for
from agent.intake.cleanup import message_domain
from agent.queue import queue_file, state_file
from agent.queue.ids import new_id
from agent.queue.state_file import dns_hold
from agent.queue.store import Queue
from tests.support import dnsmasq
from tests.support.agent_env import AgentEnv
from tests.support.relay_standin import RelayStandin
from tests.test_daemon import free_port
from tests.test_dnscheck import GOOD_DMARC, GOOD_SPF, dkim_txt
from tests.test_metrics import samples

BROKEN = "shop.example"  # its DKIM record goes away; example.com (AgentEnv's domain) stays good
SELECTOR = "sel1"


def message(from_domain: str, tag: str) -> bytes:
    return f"From: app@{from_domain}\nTo: {tag}@example.net\nSubject: {tag}\n\nhello\n".encode()


def records(site: AgentEnv, username: str) -> dict[str, list[Any]]:
    key = key_files.load_private_key(str(site.key_file))
    out: dict[str, list[Any]] = {}
    for domain in ("example.com", BROKEN):
        out[domain] = [token_for(username), GOOD_SPF]
        out[f"{SELECTOR}._domainkey.{domain}"] = [dkim_txt(key)]
        out[f"_dmarc.{domain}"] = [GOOD_DMARC]
    return out


def poll(cond: Callable[[], bool], timeout: float) -> None:
    """Like agent_env.wait_until, at a pace that suits conditions that run a `relay-agent` command."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s")


def domains(site: AgentEnv) -> dict[str, dict[str, Any]]:
    out = site.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return {d["domain"]: d for d in json.loads(out.stdout)["domains"]}


def by_rcpt(site: AgentEnv) -> dict[str, dict[str, Any]]:
    return {x["recipients"][0]["address"].split("@")[0]: x for x in site.queue_json()}


def delivered(relay: RelayStandin) -> list[str]:
    return sorted(r.split("@")[0] for m in relay.messages for r in m.rcpt_tos)


@pytest.fixture
def site(tmp_path: Path, relay_standin: RelayStandin) -> Iterator[AgentEnv]:
    """A daemon that signs for example.com and shop.example, its watch every second; [dns]
    nameserver set by the test (site.sections), which starts it."""
    metrics = {"listen": f"127.0.0.1:{free_port()}"}
    env = AgentEnv(tmp_path, relay_standin, extra={"dns": {"watch_interval": 1}, "metrics": metrics})
    yield env
    env.stop()


def start(site: AgentEnv, nameserver: str) -> None:
    site.sections["dns"]["nameserver"] = nameserver
    site.write_config()
    with site.config.open("a") as fh:  # the same key signs for the second domain
        fh.write(f'[[dkim]]\ndomain = "{BROKEN}"\nselector = "{SELECTOR}"\nkey_file = "{site.key_file}"\n')
    site.start()


def test_dkim_record_removed_holds_then_returns_and_releases(site: AgentEnv) -> None:
    relay = site.relay
    assert isinstance(relay, RelayStandin)
    good = records(site, relay.username)
    dns = dnsmasq.DnsServer(good)
    dns.start()
    try:
        start(site, dns.nameserver)
        poll(lambda: [d["dkim"] for d in domains(site).values()] == ["PASS", "PASS"], 15)
        shown = domains(site)
        assert shown[BROKEN]["token"] == "PASS" and not shown[BROKEN]["holding"]
        keys = {"domain", "account", "token", "spf", "dkim", "dmarc", "checked", "holding"}
        assert set(shown[BROKEN]) == keys and shown[BROKEN]["account"] == "default"
        assert abs(datetime.fromisoformat(shown[BROKEN]["checked"]).timestamp() - time.time()) < 30
        # queued already: the relay defers it until the domain breaks
        for tag in ("old", "manual"):
            relay.reject_rcpt(f"{tag}@example.net", 451, "4.3.0 try later")
            assert site.smtp_data(message(BROKEN, tag), rcpt=f"{tag}@example.net")[0] == 250
        poll(lambda: {x["state"] for x in by_rcpt(site).values()} == {"deferred"}, 10)
        manual = by_rcpt(site)["manual"]["id"]
        assert site.cli("queue", "hold", manual).returncode == 0  # held by hand: the watch leaves it be

        dns.stop()  # the same nameserver, without shop.example's DKIM record
        broken = {k: v for k, v in good.items() if k != f"{SELECTOR}._domainkey.{BROKEN}"}
        dns = dnsmasq.DnsServer(broken, port=dns.port)
        dns.start()
        poll(lambda: by_rcpt(site).get("old", {}).get("state") == "held", 10)
        relay.reset()  # the relay would take it now: held mail must not go
        assert site.smtp_data(message(BROKEN, "new"), rcpt="new@example.net")[0] == 250
        assert site.smtp_data(message("example.com", "other"), rcpt="other@example.net")[0] == 250
        relay.wait_for(1, timeout=10)
        held = by_rcpt(site)
        assert sorted(held) == ["manual", "new", "old"] and {x["state"] for x in held.values()} == {"held"}
        reason = held["new"]["last_error"]
        assert held["old"]["last_error"] == reason
        assert reason.startswith(f"held: {BROKEN} dkim FAIL: ")
        assert f"; publish: {SELECTOR}._domainkey.{BROKEN}." in reason  # the record to publish
        poll(lambda: domains(site)[BROKEN]["holding"], 5)
        shown = domains(site)
        assert shown[BROKEN]["dkim"] == "FAIL" and shown[BROKEN]["token"] == "PASS"
        assert shown["example.com"]["dkim"] == "PASS" and shown["example.com"]["holding"] is False
        gauge = samples(int(site.sections["metrics"]["listen"].rpartition(":")[2]))
        check = "relay_agent_domain_check"
        assert gauge[(check, (("check", "dkim"), ("domain", BROKEN)))] == 0.0
        assert gauge[(check, (("check", "dkim"), ("domain", "example.com")))] == 1.0
        assert gauge[(check, (("check", "token"), ("domain", BROKEN)))] == 1.0
        time.sleep(1.5)  # a round or two more: still held, said once
        assert delivered(relay) == ["other"]
        assert site.log().count(f"dns watch: {BROKEN}: holding its mail") == 1

        dns.stop()  # the record is back
        dns = dnsmasq.DnsServer(good, port=dns.port)
        dns.start()
        relay.wait_for(3, timeout=15)
        time.sleep(0.5)  # room for a wrong fourth delivery
        assert delivered(relay) == ["new", "old", "other"]  # each once
        [kept] = site.queue_json()  # exactly what the watch held was released
        assert (kept["id"], kept["state"]) == (manual, "held")
        assert kept["last_error"] == "held by `relay-agent queue hold`"
        assert site.log().count(f"dns watch: {BROKEN} passes again: released 2 message(s)") == 1
        assert not domains(site)[BROKEN]["holding"]
    finally:
        dns.stop()
    text = site.cli("status").stdout
    assert f"domain {BROKEN} (account default): token PASS, spf PASS, dkim PASS, dmarc PASS" in text


def test_nameserver_down_holds_nothing(site: AgentEnv) -> None:
    relay = site.relay
    assert isinstance(relay, RelayStandin)
    start(site, f"127.0.0.1:{dnsmasq.free_udp_port()}")  # nothing answers there
    poll(lambda: "dns watch: the checks could not run" in site.log(), 15)
    assert site.smtp_data(message(BROKEN, "a"), rcpt="a@example.net")[0] == 250
    relay.wait_for(1, timeout=10)
    site.wait_queue_empty(10)
    time.sleep(1.5)
    assert site.log().count("dns watch: the checks could not run") == 1  # once, not every round
    assert "holding its mail" not in site.log()
    assert domains(site) == {}


# -- the pieces, without a daemon --------------------------------------------------------------------
BODY = b"From: app@shop.example\r\nTo: a@example.net\r\nSubject: s\r\n\r\nhi\r\n"


def test_queue_file_keeps_the_from_domain_and_old_files_fall_back_to_the_sender() -> None:
    env = queue_file.Envelope("bounce@mailer.test", ("a@example.net",), 1.0, domain="shop.example")
    block, _ = queue_file.split_header(queue_file.encode(env, BODY))
    assert b"\ndomain shop.example\n" in block
    parsed, _ = queue_file.parse_header(block)
    assert parsed == env and parsed.from_domain() == "shop.example"
    old = queue_file.Envelope("Bounce@Mailer.Test", ("a@example.net",), 1.0)  # no `domain` line
    assert b"domain" not in queue_file.encode(old, BODY) and old.from_domain() == "mailer.test"
    assert queue_file.Envelope("", ("a@example.net",), 1.0).from_domain() == ""
    with pytest.raises(queue_file.FormatError):
        queue_file.parse_header(block.replace(b"domain shop.example", b"domain bad\x01name"))
    assert message_domain(b"From: a@B\xc3\xbccher.Example\r\n\r\n") == "xn--bcher-kva.example"
    assert message_domain(b"From: undisclosed\r\n\r\n") == ""


def test_hold_queued_and_release_touch_only_that_domain(tmp_path: Path) -> None:
    q = Queue(str(tmp_path / "queue"))
    q.ensure_dirs()

    def enter(sender: str, domain: str, rcpt: str) -> str:
        env = queue_file.Envelope(sender, (f"{rcpt}@example.net",), time.time(), domain=domain)
        return q.enter(env, BODY, new_id())

    ids = {
        "from": enter("app@example.com", "shop.example", "from"),  # From: decides, not the sender
        "sender": enter("app@shop.example", "", "sender"),  # an older file: the sender's domain
        "other": enter("app@shop.example", "example.com", "other"),
        "manual": enter("app@example.com", "shop.example", "manual"),
        "failed": enter("app@example.com", "shop.example", "failed"),
    }
    manual = state_file.State()
    manual.hold(state_file.MANUAL, "by hand")
    q.write_state(ids["manual"], manual)
    q.write_state(ids["failed"], state_file.State("failed", 1, 0.0, "550 no", 1.0))
    assert hold_queued(q, "shop.example", "held: why") == 2
    assert hold_queued(q, "shop.example", "held: why") == 0  # once
    assert hold_queued(q, "shop.example", "held: another why") == 0
    states = {k: q.read_state(qid) for k, qid in ids.items()}
    assert {k for k, s in states.items() if s.held_for == dns_hold("shop.example")} == {"from", "sender"}
    assert states["from"].last_error == "held: another why"  # the reason follows the verdict
    assert (states["manual"].last_error, states["other"].state) == ("by hand", "queued")
    assert held_on_disk(q) == {"shop.example": (dns_hold("shop.example"), "held: another why")}
