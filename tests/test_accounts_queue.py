"""The relay account of a queued message: chosen once at cleanup (From: domain, nearest listed
parent, else the envelope sender's domain, else the default), kept in its queue file, and each
account's pacer (its own rate, its own Redis key with limits.shared)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent import config
from agent.delivery import pacer
from agent.dkim.signing import Signer
from agent.intake.cleanup import Cleanup
from agent.queue import queue_file
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv

ACCOUNTS = """
[policy]
unsigned = "send"

[[account]]
name = "shop"
username = "mail@shop.example"
domains = ["shop.example", "shop.se"]
rate = 5.0

[[account]]
name = "news"
username = "bulk@news.example.org"
domains = ["news.example.org"]
rate = 2.5
connections = 1
"""


def load(tmp_path: Path, extra: str = ACCOUNTS, limits: dict[str, object] | None = None) -> config.Config:
    env = AgentEnv(tmp_path, extra={"limits": limits or {}})
    env.config.write_text(env.config.read_text() + extra)
    return config.load(str(env.config))


@pytest.fixture
def cleanup(tmp_path: Path) -> Cleanup:
    cfg = load(tmp_path)
    queue = Queue(cfg.queue.path)
    queue.ensure_dirs()
    return Cleanup(cfg, Signer(cfg), queue)


def test_the_account_line_round_trips_and_old_files_read_as_default() -> None:
    env = queue_file.Envelope("a@shop.example", ("b@example.net",), 1.5, (), 0, "shop")
    data = queue_file.encode(env, b"Subject: x\r\n\r\nhi\r\n")
    assert b"\naccount shop\n" in data
    assert queue_file.decode(data) == (env, b"Subject: x\r\n\r\nhi\r\n")
    old = queue_file.Envelope("a@example.com", ("b@example.net",), 1.5, (), 0)
    old_data = queue_file.encode(old, b"x\r\n")
    assert b"account" not in old_data  # the default account writes the format older versions wrote
    decoded, _ = queue_file.decode(old_data)
    assert decoded.account == "default" and decoded == old


@pytest.mark.parametrize("name", ["", "Shop", "shop shop", "../x", "a" * 65])
def test_a_bad_account_name_is_a_format_error(name: str) -> None:
    good = queue_file.encode(queue_file.Envelope("a@x.example", ("b@y.example",), 1.0, (), 0, "shop"), b"x")
    with pytest.raises(queue_file.FormatError):
        queue_file.decode(good.replace(b"account shop\n", b"account " + name.encode() + b"\n"))
    with pytest.raises(queue_file.FormatError):
        queue_file.encode(queue_file.Envelope("a@x.example", ("b@y.example",), 1.0, (), 0, name or "?"), b"x")


@pytest.mark.parametrize(
    ("envelope", "from_header", "account"),
    [
        ("app@example.com", "Shop <orders@shop.example>", "shop"),
        ("app@example.com", "orders@eu.shop.se", "shop"),  # the nearest listed parent
        ("app@example.com", "x@news.example.org", "news"),
        ("bulk@news.example.org", "app@other.example", "news"),  # From: unclaimed: the envelope's
        ("bulk@news.example.org", "orders@shop.example", "shop"),  # From: decides first
        ("app@example.com", "app@example.com", "default"),
        ("", "x@other.example", "default"),
    ],
)
def test_cleanup_chooses_the_account(cleanup: Cleanup, envelope: str, from_header: str, account: str) -> None:
    msg = f"From: {from_header}\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n".encode()
    prepared = cleanup.prepare(envelope, ["b@example.net"], msg)
    assert prepared.envelope.account == account
    # a big message, streamed, gets the same answer
    streamed = cleanup.prepare_stream(envelope, ["b@example.net"], io.BytesIO(msg).read, len(msg))
    try:
        assert streamed.envelope.account == account
    finally:
        streamed.discard()


def test_a_bounce_keeps_the_account_it_is_given(cleanup: Cleanup) -> None:
    report = b"From: MAILER-DAEMON@example.com\r\nTo: orders@shop.example\r\nSubject: failed\r\n\r\nx\r\n"
    prepared = cleanup.prepare("", ["orders@shop.example"], report, origin="bounce", account="news")
    assert prepared.envelope.account == "news"


def test_each_account_has_its_own_pace_and_fleet_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, limits={"shared": "redis://127.0.0.1:1/0", "rate": 10.0})
    keys = {a.name: pacer.fleet_key(a.relay) for a in cfg.accounts}
    assert len(set(keys.values())) == 3
    assert (
        keys["default"] == f"relay-agent:rate:{cfg.relay.username or '-'}@{cfg.relay.host}:{cfg.relay.port}"
    )
    assert "mail@shop.example" in keys["shop"]
    intervals = {a.name: pacer.make(cfg, a).interval_us for a in cfg.accounts}  # type: ignore[attr-defined]
    assert intervals == {"default": 100_000, "shop": 200_000, "news": 400_000}
    assert pacer.settings(cfg, cfg.accounts[1]) != pacer.settings(cfg, cfg.accounts[2])


def test_without_accounts_the_choice_costs_nothing(tmp_path: Path) -> None:
    cfg = load(tmp_path, extra="")
    queue = Queue(cfg.queue.path)
    queue.ensure_dirs()
    plain = Cleanup(cfg, Signer(cfg), queue)
    msg = b"From: app@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    assert plain.prepare("app@example.com", ["b@example.net"], msg).envelope.account == "default"
