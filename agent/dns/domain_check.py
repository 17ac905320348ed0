"""`dns check`: is a sender domain ready for the Elastx Mail Relay?

This module decides which checks run for which domains from the config, wires
them to agent.dns.query and reports the results. The checks themselves are pure
functions of TXT strings (plus a lookup callable where SPF includes or the DMARC
Organizational Domain need more names), one module each: agent.dns.token,
agent.dns.spf, agent.dns.dkim_record, agent.dns.dmarc.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from agent.dkim.policy import signing_domain
from agent.dns.dkim_record import ELASTX_SELECTOR, check_dkim, check_elastx_dkim, check_no_key
from agent.dns.dmarc import check_dmarc
from agent.dns.result import FAIL, CheckResult, Lookup
from agent.dns.spf import check_spf
from agent.dns.token import check_token
from agent.errors import AgentError, UsageError

if TYPE_CHECKING:
    from agent.config import Config


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def normalize_domain(text: str) -> str:
    name = (text.rpartition("@")[2] if "@" in text else text).strip().lower().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise UsageError(f"{text!r} is not a domain name") from None
    labels = name.split(".")
    if not name or len(name) > 253 or any(not lab or len(lab) > 63 for lab in labels):
        raise UsageError(f"{text!r} is not a domain name")
    if not re.fullmatch(r"[a-z0-9_.-]+", name):
        raise UsageError(f"{text!r} is not a domain name")
    return name


def sender_domains(cfg: Config) -> list[str]:
    """Every [[dkim]] domain, the default_from domain, then every account's domains, deduplicated
    in that order."""
    names = [k.domain.lower().rstrip(".") for k in cfg.dkim] + [_domain_of(cfg.sender.default_from)]
    names += [d for account in cfg.extra_accounts for d in account.domains]
    return list(dict.fromkeys(n for n in names if n))


def token_check(cfg: Config, domain: str, txts: Sequence[str]) -> CheckResult:
    """The token of the account that sends the domain's mail (its From: domain decides)."""
    name = cfg.account_for(domain, "")
    account = cfg.account(name) or cfg.default_account
    return check_token(domain, account.relay.username, txts, account.name)


def envelope_domain(cfg: Config) -> str | None:
    return _domain_of(cfg.sender.default_from) or _domain_of(cfg.relay.username) or None


def dkim_checks(cfg: Config, domain: str, lookup: Lookup) -> list[CheckResult]:
    from agent.dkim import key_files

    signer = signing_domain(domain, [k.domain for k in cfg.dkim])
    if signer is None:
        if cfg.policy.unsigned == "send":
            return [check_elastx_dkim(domain, lookup(f"{ELASTX_SELECTOR}._domainkey.{domain}"))]
        return [check_no_key(domain)]
    results = []
    for k in (k for k in cfg.dkim if k.domain == signer):
        key = key_files.load_private_key(k.key_file)
        kind, pub = key_files.key_type(key), key_files.public_key_b64(key)
        fix = key_files.zone_record(signer, k.selector, key_files.txt_value(key))
        txts = lookup(f"{k.selector}._domainkey.{signer}")
        results.append(check_dkim(domain, signer, k.selector, kind, pub, txts, fix))
    return results


def dkim_domain(cfg: Config, domain: str) -> str | None:
    """The d= mail from `domain` carries: its own or a parent's key, or Elastx's (as the domain)."""
    signer = signing_domain(domain, [k.domain for k in cfg.dkim])
    if signer is None and cfg.policy.unsigned == "send":
        return domain
    return signer


def check_domain(cfg: Config, domain: str, lookup: Lookup) -> list[CheckResult]:
    txts = lookup(domain)
    return [
        token_check(cfg, domain, txts),
        check_spf(domain, txts, lookup),
        *dkim_checks(cfg, domain, lookup),
        check_dmarc(domain, lookup, dkim_domain(cfg, domain), envelope_domain(cfg)),
    ]


def run_checks(
    cfg: Config,
    domains: Sequence[str] | None = None,
    nameserver: str | None = None,
    lookup: Lookup | None = None,
) -> list[CheckResult]:
    """All checks for `domains` (default: sender_domains); raises DnsError when DNS cannot be asked."""
    names = list(dict.fromkeys(normalize_domain(d) for d in domains)) if domains else sender_domains(cfg)
    if not names:
        raise UsageError(
            "no domain to check: give DOMAIN arguments, [[dkim]] tables, [sender] default_from"
            " or [[account]] domains"
        )
    if lookup is None:
        from agent.dns import query

        lookup = query.make_lookup(nameserver or cfg.dns.nameserver)
    return [r for name in names for r in check_domain(cfg, name, lookup)]


def exit_status(results: Iterable[CheckResult]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def format_text(results: Iterable[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.domain} {r.check} {r.status} {r.detail}")
        if r.status == FAIL and r.fix:
            lines.append(f"  publish: {r.fix}")
    return "\n".join(lines)


def format_json(results: Iterable[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


def startup_warnings(cfg: Config) -> list[str]:
    """One line per FAIL for the daemon's log; never raises (it runs in a thread at start)."""
    try:
        if not sender_domains(cfg):
            return []
        results = run_checks(cfg)
    except AgentError as exc:
        return [f"checks not done: {exc.message}"]
    except Exception as exc:  # the daemon must start whatever DNS or a key file does
        return [f"checks not done: {type(exc).__name__}: {exc}"]
    return [f"{r.domain} {r.check} FAIL {r.detail}; publish: {r.fix}" for r in results if r.status == FAIL]
