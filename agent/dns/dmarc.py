"""DMARC: the domain's record, else its Organizational Domain's (RFC 7489 6.6.3).

A policy of none, partial pct= and strict alignment that the configured signing or
envelope domain would fail are warnings, not failures: mail still flows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.dns.result import FAIL, CheckResult, Lookup, verdict
from agent.dns.txt_record import parse_tags, zone_txt

_DMARC = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")
POLICIES = ("none", "quarantine", "reject")


def dmarc_records(txts: Iterable[str]) -> list[str]:
    return [t for t in txts if _DMARC.match(t)]


def org_domain(domain: str) -> str:
    """RFC 7489 3.2 Organizational Domain, from the Public Suffix List publicsuffix2 ships."""
    from publicsuffix2 import get_tld

    labels = domain.lower().rstrip(".").split(".")
    suffix = get_tld(domain, strict=True)
    # The PSL's implicit "*" rule: an unlisted TLD is itself the public suffix.
    count = str(suffix).count(".") + 1 if suffix else 1
    return ".".join(labels[-(count + 1) :]) if len(labels) > count else domain


def dmarc_fix(domain: str) -> str:
    return zone_txt(f"_dmarc.{domain}", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}")


def find_dmarc(domain: str, lookup: Lookup) -> tuple[str, list[str]]:
    """(where, records): the domain's own records, else the Organizational Domain's (6.6.3)."""
    records = dmarc_records(lookup(f"_dmarc.{domain}"))
    org = org_domain(domain)
    if records or org == domain:
        return domain, records
    return org, dmarc_records(lookup(f"_dmarc.{org}"))


def check_dmarc(
    domain: str, lookup: Lookup, dkim_domain: str | None, envelope_domain: str | None
) -> CheckResult:
    where, records = find_dmarc(domain, lookup)
    if not records:
        org = org_domain(domain)
        also = f" or _dmarc.{org}" if org != domain else ""
        return CheckResult(
            domain, "dmarc", FAIL, f"no DMARC record at _dmarc.{domain}{also}", dmarc_fix(domain)
        )
    if len(records) > 1:
        detail = f"{len(records)} DMARC records at _dmarc.{where}: receivers ignore them all"
        return CheckResult(domain, "dmarc", FAIL, detail, dmarc_fix(where))
    tags = dict(parse_tags(records[0]) or [])
    # A record found at the Organizational Domain speaks for subdomains through sp=.
    tag = "sp" if where != domain and "sp" in tags else "p"
    policy = tags.get(tag, "").lower()
    if policy not in POLICIES:
        detail = f"_dmarc.{where}: {tag}={policy or '(missing)'} is not none, quarantine or reject"
        return CheckResult(domain, "dmarc", FAIL, detail, dmarc_fix(where))
    warns = _dmarc_warnings(domain, tags, policy, dkim_domain, envelope_domain)
    origin = f" (Organizational Domain {where})" if where != domain else ""
    found = f"_dmarc.{where}: {tag}={policy}{origin}"
    if warns:
        warns = [f"{found}: {'; '.join(warns)}"]
    return verdict(domain, "dmarc", [], warns, found, "")


def _dmarc_warnings(
    domain: str, tags: dict[str, str], policy: str, dkim_domain: str | None, envelope_domain: str | None
) -> list[str]:
    warns = []
    if policy == "none":
        warns.append("policy none only monitors: it does not protect the domain from forgery")
    pct = tags.get("pct", "100").strip()
    if pct.isdigit() and int(pct) < 100:
        warns.append(f"pct={pct}: the policy applies to {pct}% of failing mail only")
    if tags.get("adkim", "r").lower() == "s" and dkim_domain and dkim_domain != domain:
        warns.append(f"adkim=s but mail is signed d={dkim_domain}: strict DKIM alignment fails")
    if tags.get("aspf", "r").lower() == "s" and envelope_domain and envelope_domain != domain:
        warns.append(
            f"aspf=s but the envelope sender domain is {envelope_domain}: strict SPF alignment fails"
        )
    return warns
