"""The sender-domain watch: the child's checks against a real dnsmasq, and what they hold (pure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.dns.watch import changes, run_child, verdicts
from tests.support import dnsmasq
from tests.test_dns_cli import ROOT, write_config
from tests.test_dnscheck import Keys, dkim_txt, good


def r(domain: str, check: str, status: str, detail: str = "d", fix: str | None = None) -> dict[str, Any]:
    return {"domain": domain, "check": check, "status": status, "detail": detail, "fix": fix}


def test_token_or_dkim_fail_holds_spf_and_dmarc_do_not() -> None:
    got = verdicts(
        [
            r("a.example", "token", "FAIL", "no elastx-mrs token", "a.example. TXT x"),
            r("a.example", "spf", "PASS"),
            r("b.example", "spf", "FAIL", fix="b TXT spf"),
            r("b.example", "dmarc", "FAIL"),
            r("c.example", "dkim", "PASS"),
            r("c.example", "dkim", "FAIL", "sel2 missing", "sel2 TXT k"),  # the worst selector counts
        ],
        {"c.example": "shop"},
        now=1000.0,
    )
    assert (
        got["a.example"].hold == "held: a.example token FAIL: no elastx-mrs token; publish: a.example. TXT x"
    )
    assert got["b.example"].hold is None and got["b.example"].checks == {"spf": "FAIL", "dmarc": "FAIL"}
    assert got["c.example"].checks["dkim"] == "FAIL" and got["c.example"].account == "shop"
    assert got["c.example"].hold is not None and "sel2 missing" in got["c.example"].hold
    shown = got["b.example"].as_json("2026-12-04T21:00:00+00:00")
    assert shown == {
        "domain": "b.example",
        "account": "default",
        "token": "UNKNOWN",
        "spf": "FAIL",
        "dkim": "UNKNOWN",
        "dmarc": "FAIL",
        "checked": "2026-12-04T21:00:00+00:00",
        "holding": False,
    }


def test_changes_hold_once_and_release_exactly_what_passes_again() -> None:
    broken = verdicts([r("a.example", "dkim", "FAIL", "gone", "fix")], {}, 1.0)
    hold, release = changes({}, broken)
    assert list(hold) == ["a.example"] and release == []
    assert changes({"a.example": hold["a.example"]}, broken) == ({}, [])  # still broken: no new line
    fixed = verdicts([r("a.example", "dkim", "PASS")], {}, 2.0)
    assert changes({"a.example": hold["a.example"], "b.example": None}, fixed) == ({}, ["a.example"])
    assert changes({"gone.example": "held: ..."}, {}) == ({}, ["gone.example"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def test_the_child_against_dnsmasq_and_a_dead_nameserver(keys: Keys, tmp_path: Path) -> None:
    records = good("good.example", keys.rsa) | good("bad.example", keys.rsa)
    records["sel._domainkey.bad.example"] = [dkim_txt(keys.other)]  # not the key it signs with
    with dnsmasq.DnsServer(records) as dns:
        cfg = write_config(tmp_path, keys, dns.nameserver, ("good.example", "bad.example"))
        out = run_child(cfg)
    assert "error" not in out, out
    got = verdicts(out["results"], {}, 0.0)
    assert got["good.example"].hold is None and got["good.example"].checks["token"] == "PASS"
    assert got["bad.example"].hold is not None and "dkim FAIL" in got["bad.example"].hold
    dead = write_config(tmp_path, keys, f"127.0.0.1:{dnsmasq.free_udp_port()}", ("good.example",))
    out = run_child(dead)
    assert set(out) == {"error"} and out["error"], out  # nothing to hold: the check could not run


def test_the_child_runs_as_a_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agent.dns.watch", "/nonexistent/config.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("{"), r.stderr
