"""dns check against a real dnsmasq: one domain per fault, every check asserted on real answers."""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent import config
from agent.dkim import key_files
from agent.dns import domain_check, query
from agent.dns.result import FAIL, PASS, WARN, CheckResult
from agent.dns.token import token_for
from agent.dns.txt_record import zone_txt
from tests.support import dnsmasq

USER = "user@domain.com"
TOKEN = token_for(USER)
GOOD_SPF = "v=spf1 include:elastx.email -all"
GOOD_DMARC = "v=DMARC1; p=reject; rua=mailto:dmarc@example.net"


DnsServer = dnsmasq.DnsServer


def write_key(key: key_files.PrivateKey, path: Path) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return str(path)


def dkim_txt(key: key_files.PrivateKey, **override: str) -> tuple[str, ...]:
    """The key's record as served: several character-strings of <= 255 octets."""
    tags = {"v": "DKIM1", "k": key_files.key_type(key), "p": key_files.public_key_b64(key)}
    tags.update(override)
    return tuple(key_files.split_txt("; ".join(f"{k}={v}" for k, v in tags.items())))


def good(domain: str, key: key_files.PrivateKey, selector: str = "sel") -> dict[str, list[Any]]:
    return {
        domain: [TOKEN, GOOD_SPF],
        f"{selector}._domainkey.{domain}": [dkim_txt(key)],
        f"_dmarc.{domain}": [GOOD_DMARC],
    }


class Keys:
    def __init__(self, tmp: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa_file = write_key(self.rsa, tmp / "rsa.pem")
        self.ed_file = write_key(self.ed, tmp / "ed.pem")


def cases(k: Keys) -> dict[str, dict[str, list[Any]]]:
    """domain -> its records: all good except the one fault the name says."""
    c: dict[str, dict[str, list[Any]]] = {}
    c["ok.example"] = good("ok.example", k.rsa)
    c["tok-missing.example"] = good("tok-missing.example", k.rsa) | {"tok-missing.example": [GOOD_SPF]}
    other = token_for("someone@else.example")
    c["tok-other.example"] = good("tok-other.example", k.rsa) | {"tok-other.example": [other, GOOD_SPF]}
    c["tok-both.example"] = good("tok-both.example", k.rsa) | {"tok-both.example": [other, TOKEN, GOOD_SPF]}
    for name, spf in {
        "spf-missing": [],
        "spf-two": [GOOD_SPF, "v=spf1 mx -all"],
        "spf-noelastx": ["v=spf1 ip4:192.0.2.1 -all"],
        "spf-chain": ["v=spf1 include:_spf.example.net -all"],
        "spf-limit": ["v=spf1 a mx include:_big.example.net include:elastx.email -all"],
        "spf-plusall": ["v=spf1 include:elastx.email +all"],
        "spf-qall": ["v=spf1 include:elastx.email ?all"],
        "spf-tilde": ["v=spf1 include:elastx.email ~all"],
        "spf-noall": ["v=spf1 include:elastx.email"],
        "spf-redirect": ["v=spf1 redirect=_spf.example.net"],
        "spf-deadinclude": ["v=spf1 include:_gone.example.net include:elastx.email -all"],
        "spf-afterall": ["v=spf1 -all include:elastx.email"],
        "spf-negated": ["v=spf1 ~include:elastx.email -all"],
        "spf-twice": ["v=spf1 include:_inner.example.net include:_inner.example.net -all"],
        "spf-loop": ["v=spf1 include:_loop.example.net include:elastx.email -all"],
    }.items():
        d = f"{name}.example"
        c[d] = good(d, k.rsa) | {d: [TOKEN, *spf]}
    c["_spf.example.net"] = {
        "_spf.example.net": ["v=spf1 ip4:198.51.100.0/24 include:_inner.example.net ~all"]
    }
    c["_loop.example.net"] = {"_loop.example.net": ["v=spf1 include:spf-loop.example -all"]}
    c["_inner.example.net"] = {"_inner.example.net": ["v=spf1 include:elastx.email ~all"]}
    big = "v=spf1 a mx ptr exists:x.example.net a:b.example.net mx:c.example.net a:d.example.net a:e -all"
    c["_big.example.net"] = {"_big.example.net": [big]}
    dkim_cases: dict[str, list[tuple[str, ...]]] = {
        "dkim-missing": [],
        "dkim-wrongp": [dkim_txt(k.other)],
        "dkim-wrongk": [dkim_txt(k.rsa, k="ed25519")],
        "dkim-revoked": [("v=DKIM1; k=rsa; p=",)],
        "dkim-two": [dkim_txt(k.rsa), dkim_txt(k.other)],
        "dkim-nov": [(dkim_txt(k.rsa)[0].removeprefix("v=DKIM1; "), *dkim_txt(k.rsa)[1:])],
        "dkim-vlate": [tuple(key_files.split_txt("k=rsa; v=DKIM1; p=" + key_files.public_key_b64(k.rsa)))],
    }
    for name, rec in dkim_cases.items():
        d = f"{name}.example"
        c[d] = good(d, k.rsa) | {f"sel._domainkey.{d}": list(rec)}
    c["ed.example"] = good("ed.example", k.ed)
    c["send-ok.example"] = good("send-ok.example", k.rsa) | {
        "elastx._domainkey.send-ok.example": [dkim_txt(k.other)]
    }
    c["send-missing.example"] = good("send-missing.example", k.rsa)
    c["nokey.example"] = good("nokey.example", k.rsa)
    for name, dmarc in {
        "dmarc-missing": [],
        "dmarc-two": [GOOD_DMARC, "v=DMARC1; p=none"],
        "dmarc-none": ["v=DMARC1; p=none; rua=mailto:d@example.net"],
        "dmarc-badp": ["v=DMARC1; p=block"],
        "dmarc-aspf": ["v=DMARC1; p=reject; aspf=s"],
        "dmarc-other": ["v=spf1 -all"],
    }.items():
        d = f"{name}.example"
        c[d] = good(d, k.rsa) | {f"_dmarc.{d}": dmarc}
    # Organizational Domain fallback: nothing at _dmarc.mail.example.com
    c["mail.example.com"] = good("mail.example.com", k.rsa) | {"_dmarc.mail.example.com": []}
    c["example.com"] = {"_dmarc.example.com": [GOOD_DMARC]}
    c["sub.orgsp.example"] = good("sub.orgsp.example", k.rsa) | {"_dmarc.sub.orgsp.example": []}
    c["orgsp.example"] = {"_dmarc.orgsp.example": ["v=DMARC1; p=reject; sp=none"]}
    # Mail from mail.parent.example is signed by parent.example's key (d= a parent).
    c["parent.example"] = good("parent.example", k.rsa)
    c["mail.parent.example"] = {
        "mail.parent.example": [TOKEN, GOOD_SPF],
        "_dmarc.mail.parent.example": ["v=DMARC1; p=reject; adkim=s"],
    }
    return c


def flatten(c: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for recs in c.values():
        for name, values in recs.items():
            out.setdefault(name, []).extend(v for v in values if v not in out.get(name, []))
    return {n: v for n, v in out.items() if v}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Iterator[dnsmasq.DnsServer]:
    with DnsServer(flatten(cases(keys))) as server:
        yield server


def make_cfg(keys: Keys, dkim: Sequence[tuple[str, str]] = (), **sections: dict[str, Any]) -> config.Config:
    data: dict[str, Any] = {"relay": {"username": USER}} | sections
    data["dkim"] = [{"domain": d, "selector": "sel", "key_file": f} for d, f in dkim]
    return config.from_dict(data)


def run(dns: dnsmasq.DnsServer, cfg: config.Config, domain: str) -> dict[str, CheckResult]:
    results = domain_check.run_checks(cfg, [domain], dns.nameserver)
    assert [r.check for r in results] == ["token", "spf", "dkim", "dmarc"]
    assert all(r.domain == domain for r in results)
    return {r.check: r for r in results}


def check(
    dns: dnsmasq.DnsServer, keys: Keys, domain: str, **sections: dict[str, Any]
) -> dict[str, CheckResult]:
    key_file = keys.ed_file if domain == "ed.example" else keys.rsa_file
    return run(dns, make_cfg(keys, [(domain, key_file)], **sections), domain)


def assert_fail(r: CheckResult, *words: str) -> None:
    assert r.status == FAIL, r
    assert r.fix, r
    for w in words:
        assert w in r.detail, (w, r.detail)


# --- token ---------------------------------------------------------------------


def test_token_value_is_sha256sum_of_username() -> None:
    out = subprocess.run(["sha256sum"], input=USER.encode(), capture_output=True, check=True).stdout
    assert "elastx-mrs=" + out.split()[0].decode() == TOKEN


def test_everything_good_passes(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    res = check(dns, keys, "ok.example")
    assert {c: r.status for c, r in res.items()} == dict.fromkeys(res, PASS)
    assert all(r.fix is None for r in res.values())


def test_token_missing(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "tok-missing.example")["token"]
    assert_fail(r, USER)
    assert r.fix == f'tok-missing.example. IN TXT "{TOKEN}"'


def test_token_of_other_account_only(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "tok-other.example")["token"]
    assert_fail(r, token_for("someone@else.example"))
    assert r.fix == f'tok-other.example. IN TXT "{TOKEN}"'


def test_token_present_beside_other_account(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "tok-both.example")["token"]
    assert r.status == PASS
    assert token_for("someone@else.example") in r.detail


def test_token_without_username(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = config.from_dict({"dkim": [{"domain": "ok.example", "selector": "sel", "key_file": keys.rsa_file}]})
    r = run(dns, cfg, "ok.example")["token"]
    assert_fail(r, "relay.username")


# --- SPF -----------------------------------------------------------------------


def test_spf_missing(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-missing.example")["spf"]
    assert_fail(r, "no SPF record")
    assert r.fix == 'spf-missing.example. IN TXT "v=spf1 include:elastx.email -all"'


def test_spf_two_records_is_permerror(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-two.example")["spf"]
    assert_fail(r, "2 SPF records", "permerror")
    assert r.fix is not None and r.fix.startswith("spf-two.example. IN TXT ")
    merged = set(quoted_strings(r.fix)[0].split())  # the answer order is the server's
    assert merged == {"v=spf1", "mx", "include:elastx.email", "-all"}


def test_spf_without_elastx(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-noelastx.example")["spf"]
    assert_fail(r, "elastx.email")
    assert r.fix == 'spf-noelastx.example. IN TXT "v=spf1 ip4:192.0.2.1 include:elastx.email -all"'


def test_spf_include_chain_two_deep_reaches_elastx(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-chain.example")["spf"]
    assert r.status == PASS, r
    assert "3/10" in r.detail  # _spf, _inner, elastx.email


def test_spf_redirect_reaches_elastx(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-redirect.example")["spf"]
    assert r.status == PASS, r  # the ending comes from the redirect target (~all)


def test_spf_over_ten_lookups(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "spf-limit.example")["spf"], "over 10")


def test_spf_plus_all(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-plusall.example")["spf"]
    assert_fail(r, "+all")
    assert r.fix == 'spf-plusall.example. IN TXT "v=spf1 include:elastx.email -all"'


def test_spf_neutral_all_warns(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-qall.example")["spf"]
    assert (r.status, r.fix) == (WARN, None)
    assert "?all" in r.detail


def test_spf_softfail_passes(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert check(dns, keys, "spf-tilde.example")["spf"].status == PASS


def test_spf_without_all_warns(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert check(dns, keys, "spf-noall.example")["spf"].status == WARN


def test_spf_include_without_record_is_permerror(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "spf-deadinclude.example")["spf"], "_gone.example.net", "permerror")


def test_spf_include_after_all_does_not_count(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-afterall.example")["spf"]
    assert_fail(r, "does not authorize")
    assert r.fix == 'spf-afterall.example. IN TXT "v=spf1 include:elastx.email -all"'


def test_spf_include_of_elastx_with_softfail_qualifier(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-negated.example")["spf"]
    assert_fail(r, "does not authorize")
    assert r.fix == 'spf-negated.example. IN TXT "v=spf1 include:elastx.email -all"'


def test_spf_same_include_twice_is_fine(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "spf-twice.example")["spf"]
    assert r.status == PASS and "4/10" in r.detail, r


def test_spf_include_loop_is_permerror(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "spf-loop.example")["spf"], "spf-loop.example includes itself")


# --- DKIM ----------------------------------------------------------------------


def test_dkim_missing_fix_is_one_line_of_strings(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "dkim-missing.example")["dkim"]
    assert_fail(r, "no DKIM record at sel._domainkey.dkim-missing.example")
    assert r.fix == key_files.zone_record("dkim-missing.example", "sel", key_files.txt_value(keys.rsa))
    assert r.fix is not None and "\n" not in r.fix
    strings = re.findall(r'"([^"]*)"', r.fix)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == key_files.txt_value(keys.rsa)


def test_dkim_wrong_key(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dkim-wrongp.example")["dkim"], "does not match")


def test_dkim_wrong_key_type(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dkim-wrongk.example")["dkim"], "k=ed25519", "rsa")


def test_dkim_revoked(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dkim-revoked.example")["dkim"], "revoked")


def test_dkim_two_records_at_selector(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dkim-two.example")["dkim"], "2 TXT records")


def test_dkim_split_record_joins_and_passes(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    served = cases(keys)["ok.example"]["sel._domainkey.ok.example"][0]
    assert len(served) >= 2  # the 2048-bit key really is spread over several strings
    assert check(dns, keys, "ok.example")["dkim"].status == PASS


def test_dkim_without_version_tag_passes(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert check(dns, keys, "dkim-nov.example")["dkim"].status == PASS


def test_dkim_version_not_first(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dkim-vlate.example")["dkim"], "first")


def test_dkim_ed25519(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "ed.example")["dkim"]
    assert r.status == PASS and "ed25519" in r.detail


def test_unsigned_send_finds_elastx_record(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = make_cfg(keys, policy={"unsigned": "send"})
    r = run(dns, cfg, "send-ok.example")["dkim"]
    assert r.status == PASS and "elastx._domainkey.send-ok.example" in r.detail


def test_unsigned_send_without_elastx_record(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = make_cfg(keys, policy={"unsigned": "send"})
    r = run(dns, cfg, "send-missing.example")["dkim"]
    assert_fail(r, "elastx._domainkey.send-missing.example")
    assert r.fix is not None and r.fix.startswith("elastx._domainkey.send-missing.example. IN TXT")
    assert "Elastx" in r.fix


def test_unsigned_reject_without_key(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = run(dns, make_cfg(keys), "nokey.example")["dkim"]
    assert_fail(r, "no DKIM key configured for nokey.example", "relay-agent dkim keygen")


def test_parent_key_signs_subdomain(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = make_cfg(keys, [("parent.example", keys.rsa_file)])
    res = run(dns, cfg, "mail.parent.example")
    assert res["dkim"].status == PASS and "d=parent.example" in res["dkim"].detail
    assert res["dmarc"].status == WARN and "adkim=s" in res["dmarc"].detail


# --- DMARC ---------------------------------------------------------------------


def test_dmarc_missing(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "dmarc-missing.example")["dmarc"]
    assert_fail(r, "no DMARC record")
    want = "v=DMARC1; p=quarantine; rua=mailto:postmaster@dmarc-missing.example"
    assert r.fix == f'_dmarc.dmarc-missing.example. IN TXT "{want}"'


def test_dmarc_non_dmarc_txt_is_missing(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dmarc-other.example")["dmarc"], "no DMARC record")


def test_dmarc_from_organizational_domain(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "mail.example.com")["dmarc"]
    assert r.status == PASS, r
    assert "_dmarc.example.com" in r.detail


def test_dmarc_subdomain_policy_of_organizational_domain(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "sub.orgsp.example")["dmarc"]
    assert r.status == WARN and "p=none" in r.detail and "orgsp.example" in r.detail


def test_dmarc_two_records(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dmarc-two.example")["dmarc"], "2 DMARC records")


def test_dmarc_p_none_warns(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "dmarc-none.example")["dmarc"]
    assert (r.status, r.fix) == (WARN, None)
    assert "p=none" in r.detail


def test_dmarc_invalid_policy(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    assert_fail(check(dns, keys, "dmarc-badp.example")["dmarc"], "p=block")


def test_dmarc_strict_spf_alignment_warns(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    r = check(dns, keys, "dmarc-aspf.example", sender={"default_from": "cron@other.example"})["dmarc"]
    assert r.status == WARN and "aspf=s" in r.detail and "other.example" in r.detail
    same = check(dns, keys, "dmarc-aspf.example", sender={"default_from": "cron@dmarc-aspf.example"})
    assert same["dmarc"].status == PASS


# --- wiring --------------------------------------------------------------------


def test_default_domains_from_config(keys: Keys) -> None:
    cfg = make_cfg(
        keys,
        [("a.example", keys.rsa_file), ("b.example", keys.rsa_file), ("a.example", keys.ed_file)],
        sender={"default_from": "cron@B.example"},
    )
    assert domain_check.sender_domains(cfg) == ["a.example", "b.example"]
    cfg2 = make_cfg(keys, [("a.example", keys.rsa_file)], sender={"default_from": "cron@c.example"})
    assert domain_check.sender_domains(cfg2) == ["a.example", "c.example"]


def test_two_keys_for_one_domain_give_two_dkim_lines(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = make_cfg(keys, [("ok.example", keys.rsa_file), ("ok.example", keys.ed_file)])
    results = domain_check.run_checks(cfg, None, dns.nameserver)
    assert [r.check for r in results] == ["token", "spf", "dkim", "dkim", "dmarc"]
    assert [r.status for r in results if r.check == "dkim"] == [PASS, FAIL]  # same selector, other key


def test_text_format(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    results = list(check(dns, keys, "spf-missing.example").values())
    lines = domain_check.format_text(results).splitlines()
    assert lines[0].startswith("spf-missing.example token PASS ")
    assert lines[1] == "spf-missing.example spf FAIL no SPF record"
    assert lines[2] == '  publish: spf-missing.example. IN TXT "v=spf1 include:elastx.email -all"'
    assert lines[3].startswith("spf-missing.example dkim PASS ")
    assert len(lines) == 5


def test_zone_txt_splits_long_values() -> None:
    line = zone_txt("x.example", "a" * 300)
    assert line == f'x.example. IN TXT "{"a" * 255}" "{"a" * 45}"'


def silent_udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_dead_nameserver_raises_dns_error_quickly(keys: Keys) -> None:
    with silent_udp() as s:
        start = time.monotonic()
        with pytest.raises(query.DnsError) as info:
            domain_check.run_checks(make_cfg(keys), ["ok.example"], f"127.0.0.1:{s.getsockname()[1]}")
    assert time.monotonic() - start < 6
    assert info.value.exit_code == 2
    assert info.value.message.startswith("DNS query for ok.example failed: ")


def test_startup_warnings(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    cfg = make_cfg(keys, [("spf-missing.example", keys.rsa_file)], dns={"nameserver": dns.nameserver})
    assert domain_check.startup_warnings(cfg) == [
        "spf-missing.example spf FAIL no SPF record; "
        'publish: spf-missing.example. IN TXT "v=spf1 include:elastx.email -all"'
    ]
    assert domain_check.startup_warnings(make_cfg(keys)) == []  # nothing configured to check


def test_startup_warnings_never_raise(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    with silent_udp() as s:
        dead = {"nameserver": f"127.0.0.1:{s.getsockname()[1]}"}
        cfg = make_cfg(keys, [("ok.example", keys.rsa_file)], dns=dead)
        (warning,) = domain_check.startup_warnings(cfg)
    assert warning.startswith("checks not done: DNS query for ok.example failed")
    live = {"nameserver": dns.nameserver}
    unreadable = make_cfg(keys, [("ok.example", str(tmp_path / "nope.pem"))], dns=live)
    (warning,) = domain_check.startup_warnings(unreadable)
    assert "nope.pem" in warning


def quoted_strings(zone_line: str) -> tuple[str, ...]:
    return tuple(re.findall(r'"([^"]*)"', zone_line))


def test_every_fix_when_published_passes(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    """Publishing what a FAIL says to publish really fixes that check."""
    broken = [
        "tok-missing",
        "spf-missing",
        "spf-two",
        "spf-noelastx",
        "spf-plusall",
        "dkim-missing",
        "dkim-wrongp",
    ]
    broken += ["dkim-revoked", "dmarc-missing", "dmarc-two", "dmarc-badp"]
    before = {d: check(dns, keys, f"{d}.example") for d in broken}
    fixed: dict[str, list[Any]] = {}
    for d, res in before.items():
        recs = {n: list(v) for n, v in cases(keys)[f"{d}.example"].items()}
        for r in res.values():
            if r.status == FAIL:
                assert r.fix is not None
                name = r.fix.split(" ", 1)[0].rstrip(".")
                keep = [v for v in recs.get(name, []) if not _same_kind(v, r.check)]
                recs[name] = [*keep, quoted_strings(r.fix)]
        fixed |= {n: v for n, v in recs.items() if v}
    with DnsServer(fixed) as server:
        for d in broken:
            after = run(server, make_cfg(keys, [(f"{d}.example", keys.rsa_file)]), f"{d}.example")
            assert FAIL not in {r.status for r in after.values()}, (d, after)


def _same_kind(value: str | Sequence[str], check: str) -> bool:
    text = value if isinstance(value, str) else "".join(value)
    prefix = {"token": "elastx-mrs=", "spf": "v=spf1", "dmarc": "v=DMARC1", "dkim": ""}[check]
    return text.startswith(prefix)


def test_dkim_pass_means_dkimpy_verifies(dns: dnsmasq.DnsServer, keys: Keys) -> None:
    """A PASS record is one a real verifier accepts for a signature made with the local key."""
    import dkim

    lookup = query.make_lookup(dns.nameserver)
    msg = b"From: a@ok.example\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
    pem = keys.rsa.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    signed = dkim.sign(msg, b"sel", b"ok.example", pem) + msg

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return "".join(lookup(name.decode())).encode()

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert base64.b64decode(key_files.public_key_b64(keys.rsa))  # the p= we compare is real DER
