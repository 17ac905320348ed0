"""Several relay accounts, chosen by sender domain: the real daemon, the real relay stand-in over
TLS with one AUTH user per account, and what reaches it under which user."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import AgentEnv, wait_until
from tests.support.redis_server import RedisServer
from tests.support.relay_standin import DEFAULT_PASSWORD, DEFAULT_USER, RelayStandin

SHOP_USER, SHOP_PASSWORD = "mail@shop.example", "shop-Passw0rd"
NEWS_USER, NEWS_PASSWORD = "bulk@news.example.org", "news-Passw0rd"
USERS = {DEFAULT_USER: DEFAULT_PASSWORD, SHOP_USER: SHOP_PASSWORD, NEWS_USER: NEWS_PASSWORD}


def accounts_toml(shop: dict[str, Any] | None = None, news: dict[str, Any] | None = None) -> str:
    tables = []
    if shop is not None:
        tables.append({"name": "shop", "username": SHOP_USER, "domains": ["shop.example", "shop.se"], **shop})
    if news is not None:
        tables.append({"name": "news", "username": NEWS_USER, "domains": ["news.example.org"], **news})
    out = []
    for table in tables:
        out.append("[[account]]")
        out += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


def configure(env: AgentEnv, accounts: str) -> None:
    env.write_config()
    env.config.write_text(env.config.read_text() + "\n" + accounts)


@pytest.fixture
def relay() -> Iterator[RelayStandin]:
    with RelayStandin(users=USERS) as standin:
        yield standin


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_AGENT_PASSWORD_SHOP", SHOP_PASSWORD)
    monkeypatch.setenv("RELAY_AGENT_PASSWORD_NEWS", NEWS_PASSWORD)


def make_env(tmp_path: Path, relay: RelayStandin, **kwargs: Any) -> AgentEnv:
    # mail From: shop.example and news.example.org has no DKIM key in this test: send it unsigned
    env = AgentEnv(tmp_path, relay, extra={"policy": {"unsigned": "send"}}, **kwargs)
    return env


def message(from_addr: str, to: str, subject: str = "hello") -> bytes:
    return f"From: {from_addr}\nTo: {to}\nSubject: {subject}\n\nbody\n".encode()


def send(env: AgentEnv, envelope_from: str, from_header: str, to: str) -> None:
    out = env.sendmail(["-i", "-f", envelope_from, to], message(from_header, to))
    assert out.returncode == 0, out.stderr


def users_by_rcpt(relay: RelayStandin) -> dict[str, str | None]:
    return {rcpt: msg.auth_user for msg in relay.messages for rcpt in msg.rcpt_tos}


def test_each_sender_domain_goes_with_its_account(
    tmp_path: Path, relay: RelayStandin, passwords: None
) -> None:
    env = make_env(tmp_path, relay)
    configure(env, accounts_toml(shop={}, news={}))
    relay.down()
    env.start()
    try:
        send(env, "app@example.com", "shop@shop.example", "exact@example.net")
        send(env, "app@example.com", "orders@eu.shop.se", "parent@example.net")  # a listed parent
        send(env, "app@example.com", "x@news.example.org", "news@example.net")
        send(env, "app@example.com", "app@example.com", "default@example.net")  # no account claims it
        send(env, "bulk@news.example.org", "app@other.example", "envelope@example.net")  # envelope fallback
        queued = {it["recipients"][0]["address"]: it["account"] for it in env.queue_json()}
        relay.up()
        assert env.cli("queue", "flush").returncode == 0
        relay.wait_for(5, timeout=20)
        status = json.loads(env.cli("status", "--json").stdout)
    finally:
        env.stop()
    expected = {
        "exact@example.net": "shop",
        "parent@example.net": "shop",
        "news@example.net": "news",
        "default@example.net": "default",
        "envelope@example.net": "news",
    }
    assert queued == expected
    user = {"shop": SHOP_USER, "news": NEWS_USER, "default": DEFAULT_USER}
    assert users_by_rcpt(relay) == {rcpt: user[name] for rcpt, name in expected.items()}
    for rcpt, name in expected.items():
        assert f"to=<{rcpt}>, relay=127.0.0.1[127.0.0.1]:{relay.port}, account={name}, delay=" in env.log()
    accounts = {a["name"]: a for a in status["accounts"]}
    assert list(accounts) == ["default", "shop", "news"]
    assert accounts["shop"] == {
        "name": "shop",
        "username": SHOP_USER,
        "rate": 500.0,
        "effective_rate": 500.0,
        "last_relay_error": f"connect failed at 127.0.0.1:{relay.port}: Connection refused",  # while down
    }


def test_a_bounce_goes_with_the_failed_message_account(
    tmp_path: Path, relay: RelayStandin, passwords: None
) -> None:
    env = make_env(tmp_path, relay)
    configure(env, accounts_toml(shop={}))
    relay.reject_rcpt("gone@example.net")
    env.start()
    try:
        send(env, "orders@shop.example", "orders@shop.example", "gone@example.net")
        msgs = relay.wait_for(1, timeout=20)  # the bounce, to orders@shop.example
    finally:
        env.stop()
    assert [(m.mail_from, m.rcpt_tos, m.auth_user) for m in msgs] == [
        ("", ("orders@shop.example",), SHOP_USER)
    ]
    assert "to=<gone@example.net>" in env.log() and "account=shop" in env.log()


def _max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def queue_both_then_release(env: AgentEnv, relay: RelayStandin, n: int) -> None:
    """n messages for shop and n for news queued while the relay is down, then all released at once
    (a flush), so each account's pace shows from the first MAIL FROM on; the daemon stopped after."""
    relay.down()
    env.start()
    try:
        for i in range(n):
            send(env, "app@example.com", "a@shop.example", f"s{i}@example.net")
            send(env, "app@example.com", "a@news.example.org", f"n{i}@example.net")
        relay.up()
        assert env.cli("queue", "flush").returncode == 0
        relay.wait_for(2 * n, timeout=20)
    finally:
        env.stop()


def test_each_account_is_paced_at_its_own_rate(tmp_path: Path, relay: RelayStandin, passwords: None) -> None:
    n = 10
    env = make_env(tmp_path, relay)
    configure(env, accounts_toml(shop={"rate": 5.0}, news={"rate": 2.5, "connections": 1}))
    queue_both_then_release(env, relay, n)
    by_user = relay.mail_from_times_by_user
    for user, rate in ((SHOP_USER, 5.0), (NEWS_USER, 2.5)):
        times = sorted(by_user[user])
        assert len(times) == n, (user, len(times))
        measured = (n - 1) / (times[-1] - times[0])
        assert measured == pytest.approx(rate, rel=0.1), (user, measured)
        for window in (1.0, 1.5, 2.0):
            assert _max_in_window(times, window) <= rate * window + 1, (user, window)
    # each account's own connections, reused: news has one, shop the default two
    conns = {user: {m.connection_id for m in msgs} for user, msgs in relay.by_user().items()}
    assert len(conns[NEWS_USER]) == 1 and len(conns[SHOP_USER]) <= 2
    assert not conns[NEWS_USER] & conns[SHOP_USER]
    # each account's pace is its own: the two ran side by side, not one after the other
    shop, news = sorted(by_user[SHOP_USER]), sorted(by_user[NEWS_USER])
    assert shop[0] < news[-1] and news[0] < shop[-1]


def test_a_wrong_password_never_delays_another_account(
    tmp_path: Path, relay: RelayStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_AGENT_PASSWORD_SHOP", "not-the-password")
    env = make_env(tmp_path, relay)
    env.sections["queue"].update(retry_initial=30, retry_max=60)  # a backoff of 30 s, were it shared
    configure(env, accounts_toml(shop={}))
    env.start()
    try:
        for i in range(5):
            send(env, "app@example.com", "a@shop.example", f"s{i}@example.net")
        # the shop account now fails at AUTH (535) and backs off; the default account goes on
        wait_until(lambda: "535" in env.log(), timeout=10)
        started = time.monotonic()
        for i in range(5):
            send(env, "app@example.com", "app@example.com", f"d{i}@example.net")
        msgs = relay.wait_for(5, timeout=5)
        deferred = {it["recipients"][0]["address"]: it for it in env.queue_json()}
        status = json.loads(env.cli("status", "--json").stdout)
        text = env.cli("status").stdout
    finally:
        env.stop()
    assert f"account shop ({SHOP_USER}): 500 msg/s\n  last relay error: auth failed" in text
    assert {m.rcpt_tos[0] for m in msgs} == {f"d{i}@example.net" for i in range(5)}
    assert all(m.auth_user == DEFAULT_USER for m in msgs)
    # the default messages reached the relay as they were submitted, not after shop's backoff
    assert max(m.time for m in msgs) - started < 5.0
    assert set(deferred) == {f"s{i}@example.net" for i in range(5)}
    assert all(it["account"] == "shop" for it in deferred.values())
    shop = next(a for a in status["accounts"] if a["name"] == "shop")
    assert "535" in shop["last_relay_error"]
    default = next(a for a in status["accounts"] if a["name"] == "default")
    assert default["last_relay_error"] is None


def test_a_down_relay_for_one_account_never_delays_another(
    tmp_path: Path, relay: RelayStandin, passwords: None
) -> None:
    with RelayStandin(users=USERS) as other:
        other.down()  # the shop account's relay: unreachable
        env = make_env(tmp_path, relay)
        env.sections["queue"].update(retry_initial=30, retry_max=60)  # a backoff of 30 s, were it shared
        configure(env, accounts_toml(shop={"port": other.port, "ca_file": other.ca_file}))
        env.start()
        try:
            started = time.monotonic()
            for i in range(5):
                send(env, "app@example.com", "a@shop.example", f"s{i}@example.net")
                send(env, "app@example.com", "app@example.com", f"d{i}@example.net")
            msgs = relay.wait_for(5, timeout=5)
            assert max(m.time for m in msgs) - started < 5.0
            other.up()
            assert env.cli("queue", "flush").returncode == 0
            shop_msgs = other.wait_for(5, timeout=15)
        finally:
            env.stop()
    assert {m.rcpt_tos[0] for m in msgs} == {f"d{i}@example.net" for i in range(5)}
    assert {(m.rcpt_tos[0], m.auth_user) for m in shop_msgs} == {
        (f"s{i}@example.net", SHOP_USER) for i in range(5)
    }


def test_a_reload_that_drops_an_account_keeps_its_mail_queued(
    tmp_path: Path, relay: RelayStandin, passwords: None
) -> None:
    env = make_env(tmp_path, relay)
    # retries far apart: the message goes when its account is back, not at its next retry
    env.sections["queue"].update(retry_initial=60, retry_max=120)
    configure(env, accounts_toml(shop={}))
    relay.down()
    env.start()
    try:
        send(env, "app@example.com", "a@shop.example", "shop@example.net")
        wait_until(lambda: "to=<shop@example.net>, relay=127.0.0.1:" in env.log())  # queued, tried
        assert ", account=shop, " in env.log()
        configure(env, "")  # the shop account is gone
        assert env.proc is not None
        env.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: env.log().count("reloaded config") == 1)
        send(env, "app@example.com", "app@example.com", "default@example.net")
        relay.up()
        assert env.cli("queue", "flush").returncode == 0
        relay.wait_for(1, timeout=10)
        wait_until(lambda: "account 'shop' is not configured" in env.log(), timeout=10)
        (item,) = env.queue_json()
        assert item["account"] == "shop" and item["state"] == "deferred"
        assert "shop" in item["last_error"] and "not configured" in item["last_error"]
        assert [m.rcpt_tos for m in relay.messages] == [("default@example.net",)]  # never another's
        configure(env, accounts_toml(shop={}))  # back again
        env.proc.send_signal(signal.SIGHUP)
        msgs = relay.wait_for(2, timeout=10)
    finally:
        env.stop()
    assert users_by_rcpt(relay) == {"default@example.net": DEFAULT_USER, "shop@example.net": SHOP_USER}
    assert len(msgs) == 2


def test_with_a_shared_rate_each_account_has_its_own_fleet_key(
    tmp_path: Path, relay: RelayStandin, passwords: None, redis_server: RedisServer
) -> None:
    n, rate = 8, 5.0
    env = make_env(tmp_path, relay)
    env.sections["limits"].update(shared=redis_server.url, rate=rate)
    configure(env, accounts_toml(shop={}, news={}))  # both at limits.rate, as the default is
    queue_both_then_release(env, relay, n)
    assert "unreachable" not in env.log()
    by_user = relay.mail_from_times_by_user
    for user in (SHOP_USER, NEWS_USER):  # one key for both would give each half the rate
        times = sorted(by_user[user])
        assert len(times) == n
        assert (n - 1) / (times[-1] - times[0]) == pytest.approx(rate, rel=0.15), user
        assert _max_in_window(times, 1.0) <= rate + 2
