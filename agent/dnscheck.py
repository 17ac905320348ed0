"""`dns check`: is a sender domain ready for the Elastx Mail Relay?

The checks are pure functions of TXT strings (plus a lookup callable where SPF
includes or the DMARC Organizational Domain need more names), so every fault can
be tested from plain data; `run_checks` wires them to agent.dnsquery.

Decisions worth knowing:
- SPF `~all` is PASS: softfail is the common recommendation and DMARC does the
  enforcing; `?all` and a missing all are WARN, `+all` is FAIL.
- Every FAIL carries a zone-file line to publish, a template with a <placeholder>
  where only the user or Elastx knows the value.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from agent.dkim_policy import signing_domain
from agent.errors import AgentError, UsageError

if TYPE_CHECKING:
    from agent.config import Config

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
TOKEN_PREFIX = "elastx-mrs="
ELASTX_SPF = "elastx.email"
ELASTX_SELECTOR = "elastx"
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4
TXT_CHUNK = 255

Lookup = Callable[[str], list[str]]


@dataclass(frozen=True)
class CheckResult:
    domain: str
    check: str  # token | spf | dkim | dmarc
    status: str  # PASS | WARN | FAIL
    detail: str
    fix: str | None = None


def zone_txt(name: str, value: str) -> str:
    """One zone-file line publishing `value`, split into quoted strings of <= 255 characters."""
    chunks = [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"{name.rstrip('.')}. IN TXT {quoted}"


def _verdict(domain: str, check: str, fails: list[str], warns: list[str], ok: str, fix: str) -> CheckResult:
    if fails:
        return CheckResult(domain, check, FAIL, "; ".join(fails + warns), fix)
    if warns:
        return CheckResult(domain, check, WARN, "; ".join(warns))
    return CheckResult(domain, check, PASS, ok)


# --- token -------------------------------------------------------------------


def token_for(username: str) -> str:
    """What `echo -n USERNAME | sha256sum` gives, as the TXT value Elastx looks for."""
    return TOKEN_PREFIX + hashlib.sha256(username.encode()).hexdigest()


def check_token(domain: str, username: str, txts: Sequence[str]) -> CheckResult:
    tokens = [t.strip() for t in txts if t.strip().lower().startswith(TOKEN_PREFIX)]
    if not username:
        fix = zone_txt(domain, TOKEN_PREFIX + "<sha256 hex of relay.username>")
        return CheckResult(domain, "token", FAIL, "relay.username is not set: set it in [relay]", fix)
    want = token_for(username)
    others = [t for t in tokens if t.lower() != want]
    note = f" (also {len(others)} other account token(s): {', '.join(others)})" if others else ""
    if len(others) < len(tokens):  # ours is among them
        return CheckResult(domain, "token", PASS, f"{want} present for {username}{note}")
    detail = f"no {TOKEN_PREFIX} token for {username}{note}"
    return CheckResult(domain, "token", FAIL, detail, zone_txt(domain, want))


# --- SPF ---------------------------------------------------------------------

_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
_MECHANISM = re.compile(r"([A-Za-z0-9_.-]*)(?::([^/]*))?")
_QUERYING = {"include", "a", "mx", "ptr", "exists"}


def spf_records(txts: Iterable[str]) -> list[str]:
    return [t for t in txts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


@dataclass
class SpfWalk:
    """What evaluating a record (and everything it includes) would touch."""

    lookups: int = 0
    authorized: bool = False
    problems: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # the include path being walked, for loops


def _split_term(term: str) -> tuple[str, str, str]:
    """(qualifier, mechanism name, domain argument) of one SPF mechanism."""
    qual = term[0] if term[0] in "+-~?" else "+"
    m = _MECHANISM.match(term.lstrip("+-~?"))
    name, arg = (m.group(1).lower(), m.group(2) or "") if m else ("", "")
    return qual, name, arg


def walk_spf(record: str, lookup: Lookup, state: SpfWalk, passing: bool = True) -> str | None:
    """Follow includes and redirect recursively; return the record's effective all qualifier."""
    redirect = ""
    for term in record.split()[1:]:
        mod = _MODIFIER.match(term)
        if mod:
            redirect = mod.group(2) if mod.group(1).lower() == "redirect" else redirect
            continue
        qual, name, arg = _split_term(term)
        if name == "all":
            return qual  # terms after all are never evaluated, redirect is ignored
        if name in _QUERYING:
            state.lookups += 1
        if name == "include":
            _follow(arg, lookup, state, passing and qual == "+")
    if not redirect:
        return None
    state.lookups += 1
    return _follow(redirect, lookup, state, passing)


def _follow(target: str, lookup: Lookup, state: SpfWalk, passing: bool) -> str | None:
    target = target.lower().rstrip(".")
    if target == ELASTX_SPF:
        state.authorized = state.authorized or passing
        return None
    if "%" in target or state.lookups > SPF_LOOKUP_LIMIT:
        return None  # macros cannot be expanded without a message; over the limit is already FAIL
    if target in state.seen:
        state.problems.append(f"{target} includes itself (permerror)")
        return None
    records = spf_records(lookup(target))
    if len(records) != 1:
        what = "no SPF record" if not records else f"{len(records)} SPF records"
        state.problems.append(f"{target} has {what} (permerror)")
        return None
    state.seen.add(target)
    try:
        return walk_spf(records[0], lookup, state, passing)
    finally:
        state.seen.discard(target)  # the same record included twice is allowed, only a cycle is not


def spf_fix(domain: str, record: str | None) -> str:
    """The record with include:elastx.email before its all term (and +all made -all)."""
    if record is None:
        return zone_txt(domain, f"v=spf1 include:{ELASTX_SPF} -all")
    terms = [t for t in record.split() if t.lower().lstrip("+-~?") != f"include:{ELASTX_SPF}"]
    terms = ["-all" if t.lower() in ("all", "+all") else t for t in terms]
    at = next((i for i, t in enumerate(terms) if t.lower().lstrip("+-~?") == "all"), len(terms))
    if at == len(terms):
        at = next((i for i, t in enumerate(terms) if t.lower().startswith("redirect=")), at)
    terms.insert(max(at, 1), f"include:{ELASTX_SPF}")
    return zone_txt(domain, " ".join(terms))


def spf_merge(records: Sequence[str]) -> str:
    """Two or more SPF records as one: every mechanism once, the first record's all term last."""
    terms: list[str] = []
    ending = ""
    for record in records:
        for term in record.split()[1:]:
            if term.lower().lstrip("+-~?") == "all":
                ending = ending or term
            elif term not in terms:
                terms.append(term)
    return " ".join(["v=spf1", *terms, ending or "-all"])


def check_spf(domain: str, txts: Sequence[str], lookup: Lookup) -> CheckResult:
    records = spf_records(txts)
    if not records:
        return CheckResult(domain, "spf", FAIL, "no SPF record", spf_fix(domain, None))
    if len(records) > 1:
        detail = f"{len(records)} SPF records (permerror): merge them into one"
        return CheckResult(domain, "spf", FAIL, detail, spf_fix(domain, spf_merge(records)))
    state = SpfWalk(seen={domain})
    ending = walk_spf(records[0], lookup, state)
    fails, warns = list(state.problems), []
    if state.lookups > SPF_LOOKUP_LIMIT:
        fails.append(f"over {SPF_LOOKUP_LIMIT} DNS-querying terms (RFC 7208 4.6.4): flatten some includes")
    if not state.authorized:
        fails.append(f"does not authorize {ELASTX_SPF} (no include:{ELASTX_SPF})")
    if ending == "+":
        fails.append("+all lets every host on the Internet send as this domain")
    elif ending == "?":
        warns.append("?all is neutral: forged mail is not marked")
    elif ending is None:
        warns.append("no all term: forged mail is neutral")
    broken = state.problems or state.lookups > SPF_LOOKUP_LIMIT
    fix = spf_fix(domain, None if broken else records[0])
    ok = f"authorizes {ELASTX_SPF}, {state.lookups}/{SPF_LOOKUP_LIMIT} DNS lookups, ends {ending}all"
    return _verdict(domain, "spf", fails, warns, ok, fix)


# --- DKIM --------------------------------------------------------------------


def parse_tags(record: str) -> list[tuple[str, str]] | None:
    """An RFC 6376 3.2 tag list; None if malformed (no '=' or a tag twice)."""
    tags: list[tuple[str, str]] = []
    for part in record.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or name.strip() in (n for n, _ in tags):
            return None
        tags.append((name.strip(), value.strip()))
    return tags


def _b64_bytes(value: str) -> bytes | None:
    try:
        return binascii.a2b_base64("".join(value.split()).encode())
    except (binascii.Error, ValueError):
        return None


def dkim_record_problem(txts: Sequence[str], name: str) -> tuple[dict[str, str], str]:
    """The tags of the one DKIM key record at `name`, or a reason it is not usable."""
    if not txts:
        return {}, f"no DKIM record at {name}"
    if len(txts) > 1:
        return {}, f"{len(txts)} TXT records at {name}: publish exactly one"
    tags = parse_tags(txts[0])
    if tags is None:
        return {}, f"{name}: malformed tag list"
    names = [n for n, _ in tags]
    if "v" in names and (names[0] != "v" or tags[0][1] != "DKIM1"):
        return {}, f"{name}: v=DKIM1 must come first"
    found = dict(tags)
    if "p" not in found:
        return found, f"{name}: no p= tag"
    if not "".join(found["p"].split()):
        return found, f"{name}: empty p= (the key is revoked)"
    return found, ""


def check_dkim(
    domain: str, key_domain: str, selector: str, kind: str, public_b64: str, txts: Sequence[str], fix: str
) -> CheckResult:
    """The record at selector._domainkey.key_domain against the local key (kind "rsa"|"ed25519")."""
    name = f"{selector}._domainkey.{key_domain}"
    tags, problem = dkim_record_problem(txts, name)
    fails, warns = [problem] if problem else [], []
    if not problem:
        published = tags.get("k", "rsa").lower()
        if published != kind:
            fails.append(f"{name}: k={published} but the local key is {kind}")
        elif _b64_bytes(tags["p"]) != _b64_bytes(public_b64):
            fails.append(f"{name}: p= does not match the local {kind} key")
        if "h" in tags and "sha256" not in tags["h"].lower().replace(" ", "").split(":"):
            fails.append(f"{name}: h={tags['h']} excludes sha256")
        if "y" in tags.get("t", "").lower().replace(" ", "").split(":"):
            warns.append(f"{name}: t=y (testing): receivers may ignore the signature")
    parent = f" (d={key_domain}, a parent of {domain})" if key_domain != domain else ""
    return _verdict(domain, "dkim", fails, warns, f"{name} matches the local {kind} key{parent}", fix)


def check_elastx_dkim(domain: str, txts: Sequence[str]) -> CheckResult:
    """unsigned = "send": Elastx signs, so its own record must be published for this domain."""
    name = f"{ELASTX_SELECTOR}._domainkey.{domain}"
    for txt in txts:
        tags = parse_tags(txt)
        if tags and tags[0] == ("v", "DKIM1") and "".join(dict(tags).get("p", "").split()):
            return CheckResult(domain, "dkim", PASS, f"{name} present (Elastx signs this domain's mail)")
    detail = f'no Elastx DKIM record at {name} (unsigned = "send": Elastx signs this domain\'s mail)'
    fix = zone_txt(name, "v=DKIM1; k=rsa; p=<the public key exactly as given by Elastx>")
    return CheckResult(domain, "dkim", FAIL, detail, fix)


def check_no_key(domain: str) -> CheckResult:
    """unsigned = "reject": mail from a domain without a key is refused."""
    detail = (
        f"no DKIM key configured for {domain}: relay-agent dkim keygen --domain {domain} "
        "--selector SELECTOR, then add a [[dkim]] table"
    )
    fix = zone_txt(f"SELECTOR._domainkey.{domain}", "v=DKIM1; k=rsa; p=<printed by relay-agent dkim keygen>")
    return CheckResult(domain, "dkim", FAIL, detail, fix)


# --- DMARC -------------------------------------------------------------------

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
    return _verdict(domain, "dmarc", [], warns, found, "")


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


# --- wiring ------------------------------------------------------------------


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
    """Every [[dkim]] domain, then the default_from domain, deduplicated in that order."""
    names = [k.domain.lower().rstrip(".") for k in cfg.dkim] + [_domain_of(cfg.sender.default_from)]
    return list(dict.fromkeys(n for n in names if n))


def envelope_domain(cfg: Config) -> str | None:
    return _domain_of(cfg.sender.default_from) or _domain_of(cfg.relay.username) or None


def dkim_checks(cfg: Config, domain: str, lookup: Lookup) -> list[CheckResult]:
    from agent import dkim_keys

    signer = signing_domain(domain, [k.domain for k in cfg.dkim])
    if signer is None:
        if cfg.policy.unsigned == "send":
            return [check_elastx_dkim(domain, lookup(f"{ELASTX_SELECTOR}._domainkey.{domain}"))]
        return [check_no_key(domain)]
    results = []
    for k in (k for k in cfg.dkim if k.domain == signer):
        key = dkim_keys.load_private_key(k.key_file)
        kind, pub = dkim_keys.key_type(key), dkim_keys.public_key_b64(key)
        fix = dkim_keys.zone_record(signer, k.selector, dkim_keys.txt_value(key))
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
        check_token(domain, cfg.relay.username, txts),
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
            "no domain to check: give DOMAIN arguments, [[dkim]] tables or [sender] default_from"
        )
    if lookup is None:
        from agent import dnsquery

        lookup = dnsquery.make_lookup(nameserver or cfg.dns.nameserver)
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
