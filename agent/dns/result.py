"""One `dns check` finding: PASS, WARN or FAIL for one check of one domain.

Every FAIL carries a fix, a zone-file line to publish (see agent.dns.txt_record), so
the user is never told only what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# name -> its TXT strings; the checks take it so they stay testable from plain data.
Lookup = Callable[[str], list[str]]


@dataclass(frozen=True)
class CheckResult:
    domain: str
    check: str  # token | spf | dkim | dmarc
    status: str  # PASS | WARN | FAIL
    detail: str
    fix: str | None = None


def verdict(domain: str, check: str, fails: list[str], warns: list[str], ok: str, fix: str) -> CheckResult:
    """FAIL if anything failed (warnings appended), else WARN if anything warned, else PASS."""
    if fails:
        return CheckResult(domain, check, FAIL, "; ".join(fails + warns), fix)
    if warns:
        return CheckResult(domain, check, WARN, "; ".join(warns))
    return CheckResult(domain, check, PASS, ok)
