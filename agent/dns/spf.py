"""SPF: does a domain's record authorize elastx.email, within RFC 7208's limits?

Includes and redirect= are followed through a lookup callable, counting the
DNS-querying terms against the limit of 10. `~all` is PASS: softfail is the common
recommendation and DMARC does the enforcing; `?all` and a missing all are WARN,
`+all` is FAIL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.dns.result import FAIL, CheckResult, Lookup, verdict
from agent.dns.txt_record import zone_txt

ELASTX_SPF = "elastx.email"
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4

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
    return verdict(domain, "spf", fails, warns, ok, fix)
