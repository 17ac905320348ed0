"""The Part 2 config: [[account]] tables and which account sends a domain's mail, [quotas], the
capture mode, adaptive pacing and the DNS watch; each mistake one line naming the key (exit 78)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.config import from_dict
from agent.errors import ConfigError
from tests.support.agent_env import RELAY_AGENT

SHOP = {"name": "shop", "username": "mail@shop.example", "domains": ["shop.example", "Shop.SE."]}
NEWS = {"name": "news", "username": "n@example.com", "domains": ["news.example.com"], "rate": 2.5}


def cfg(**extra: Any) -> Any:
    return from_dict({"relay": {"username": "ops@example.com"}, **extra})


def test_accounts_inherit_the_default_relay_and_limits() -> None:
    c = cfg(account=[SHOP, {**NEWS, "port": 465, "tls": "implicit", "connections": 1}])
    assert [a.name for a in c.accounts] == ["default", "shop", "news"]
    shop, news = c.account("shop"), c.account("news")
    assert shop is not None and news is not None
    assert shop.domains == ("shop.example", "shop.se") and shop.rate == 10.0 and shop.connections == 2
    assert shop.relay.host == "smtp.elastx.email" and shop.relay.username == "mail@shop.example"
    assert (news.rate, news.connections, news.relay.port, news.relay.tls) == (2.5, 1, 465, "implicit")
    assert c.default_account.relay.username == "ops@example.com" and c.default_account.domains == ()


@pytest.mark.parametrize(
    ("from_domain", "sender_domain", "want"),
    [
        ("shop.example", "", "shop"),
        ("eu.shop.example", "", "shop"),  # the nearest listed parent
        ("news.example.com", "", "news"),
        ("a.news.example.com", "shop.se", "news"),  # From: decides before the envelope
        ("example.com", "news.example.com", "news"),  # no From: match: the envelope sender's
        ("example.com", "example.com", "default"),  # a parent of a listed domain is not covered
        ("other.example", "shop.se", "shop"),  # From: matches nothing: the envelope sender's domain
        ("", "", "default"),
    ],
)
def test_which_account_sends(from_domain: str, sender_domain: str, want: str) -> None:
    assert cfg(account=[SHOP, NEWS]).account_for(from_domain, sender_domain) == want


def test_a_subdomain_listed_itself_goes_to_its_own_account() -> None:
    inner = {"name": "eu", "username": "eu@shop.example", "domains": ["eu.shop.example"]}
    c = cfg(account=[SHOP, inner])
    assert c.account_for("x.eu.shop.example", "") == "eu" and c.account_for("us.shop.example", "") == "shop"


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        (
            [SHOP, {**NEWS, "domains": ["shop.se"]}],
            'account domain shop.se: listed in both "shop" and "news"',
        ),
        ([{**SHOP, "name": "default"}], "account[0].name"),
        ([{**SHOP, "name": "Shop_1"}], "account[0].name"),
        ([SHOP, SHOP], 'account "shop": defined twice'),
        ([{**SHOP, "colour": "red"}], "account.shop.colour: unknown key"),
        ([{**SHOP, "mode": "capture"}], "account.shop.mode: unknown key"),
        ([{**SHOP, "domains": []}], "account.shop.domains: required"),
        ([{k: v for k, v in SHOP.items() if k != "username"}], "account.shop.username: required"),
        ([{**SHOP, "rate": 0}], "account.shop.rate"),
        ([{**SHOP, "port": "587"}], "account.shop.port: expected an integer"),
        ([{**SHOP, "tls": "none"}], "account.shop.tls"),
        ({"name": "x"}, "account.x.username: required"),
        ("shop", "[[account]] must be an array of tables"),
    ],
)
def test_account_mistakes_are_one_line(accounts: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(account=accounts)
    assert message in err.value.message and "\n" not in err.value.message


def test_quotas() -> None:
    q = cfg(quotas={"www-data": "500/h", "*": "5000/d", "smtp": "10/min", "cron": "1/s"}).quotas
    assert {u: (x.count, x.period, str(x)) for u, x in q.items()} == {
        "www-data": (500, 3600.0, "500/h"),
        "*": (5000, 86400.0, "5000/d"),
        "smtp": (10, 60.0, "10/min"),
        "cron": (1, 1.0, "1/s"),
    }


@pytest.mark.parametrize("value", ["500", "500/week", "0/h", "-1/h", "x/h", 500, "/h"])
def test_a_bad_quota_names_the_user(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"quotas\.www-data: expected"):
        cfg(quotas={"www-data": value})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"relay": {"mode": "drop"}}, "relay.mode"),
        ({"relay": {"mode": "capture"}}, "relay.capture_dir"),
        ({"relay": {"mode": "capture", "capture_dir": "rel/dir"}}, "relay.capture_dir"),
        ({"limits": {"min_rate": 0}}, "limits.min_rate"),
        ({"limits": {"min_rate": 20.0}}, "limits.min_rate"),
        ({"limits": {"recover_after": 0}}, "limits.recover_after"),
        ({"limits": {"over_quota": "drop"}}, "limits.over_quota"),
        ({"dns": {"watch_interval": -1}}, "dns.watch_interval"),
    ],
)
def test_part2_keys_are_checked(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(extra)


def test_part2_defaults() -> None:
    c = from_dict({"relay": {"mode": "capture", "capture_dir": "/srv/capture"}})
    assert c.capture and c.relay.capture_dir == "/srv/capture"
    lim = c.limits
    assert (lim.adaptive, lim.min_rate, lim.recover_after, lim.over_quota) == (True, 0.5, 60.0, "hold")
    assert c.dns.watch_interval == 0.0 and c.quotas == {} and c.extra_accounts == ()
    assert not from_dict({}).capture


def test_config_check_exits_78_naming_both_accounts(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[relay]\nusername = "ops@example.com"\n'
        '[[account]]\nname = "shop"\nusername = "a@shop.example"\ndomains = ["shop.example"]\n'
        '[[account]]\nname = "web"\nusername = "b@shop.example"\ndomains = ["shop.example"]\n'
    )
    r = subprocess.run(
        [RELAY_AGENT, "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip().splitlines() == [
        'relay-agent: account domain shop.example: listed in both "shop" and "web"'
    ], r.stderr
