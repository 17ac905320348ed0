"""The daemon's sender-domain watch: `dns check`'s checks for every sender domain, in a child process,
turned into what to hold (pure): a token or DKIM FAIL holds the domain's mail, a later PASS releases it.

The child (`python -m agent.dns.watch CONFIG`) prints one JSON object: {"results": [...]} or, when DNS
cannot be asked, {"error": "..."}; a watch that could not run holds nothing. dnspython and the Public
Suffix List stay in the child, as for the start-up check.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

CHECKS = ("token", "spf", "dkim", "dmarc")
HOLDING = ("token", "dkim")  # the relay refuses such mail; SPF and DMARC are only reported
RANK = {"FAIL": 0, "WARN": 1, "PASS": 2}
TIMEOUT = 120.0


@dataclass(frozen=True)
class DomainVerdict:
    domain: str
    account: str
    checks: dict[str, str] = field(default_factory=dict)  # check -> PASS | WARN | FAIL | UNKNOWN
    hold: str | None = None  # why its mail is held (the failing detail and the record to publish)
    checked: float = 0.0

    def as_json(self, iso: str) -> dict[str, Any]:
        out: dict[str, Any] = {"domain": self.domain, "account": self.account}
        out |= {c: self.checks.get(c, "UNKNOWN") for c in CHECKS}
        return out | {"checked": iso, "holding": self.hold is not None}


def verdicts(results: list[dict[str, Any]], accounts: dict[str, str], now: float) -> dict[str, DomainVerdict]:
    """The child's results grouped by domain; `accounts`: domain -> the account that sends for it."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_domain.setdefault(r["domain"], []).append(r)
    out = {}
    for domain, rs in by_domain.items():
        checks: dict[str, str] = {}
        for r in rs:  # several DKIM selectors: the worst one counts
            if r["check"] not in checks or RANK.get(r["status"], 2) < RANK.get(checks[r["check"]], 2):
                checks[r["check"]] = r["status"]
        failing = [r for r in rs if r["check"] in HOLDING and r["status"] == "FAIL"]
        hold = "; ".join(_reason(r) for r in failing) or None
        out[domain] = DomainVerdict(domain, accounts.get(domain, "default"), checks, hold, now)
    return out


def _reason(r: dict[str, Any]) -> str:
    fix = f"; publish: {r['fix']}" if r.get("fix") else ""
    return f"held: {r['domain']} {r['check']} FAIL: {r['detail']}{fix}"


def changes(
    before: dict[str, str | None], after: dict[str, DomainVerdict]
) -> tuple[dict[str, str], list[str]]:
    """(domain -> reason, for domains to hold now or whose reason changed; domains to release).

    `before`: domain -> the reason its mail is held for (None: not held). A domain the watch no
    longer checks is released: nothing says it is broken any more.
    """
    hold = {d: v.hold for d, v in after.items() if v.hold is not None and before.get(d) != v.hold}
    release = sorted(
        d for d, reason in before.items() if reason is not None and after.get(d, _OK).hold is None
    )
    return hold, release


_OK = DomainVerdict("", "")


def run_child(config_path: str) -> dict[str, Any]:
    """In the daemon (a thread): the child's JSON, or {"error": why} if it could not run."""
    import subprocess

    cmd = [sys.executable, "-m", "agent.dns.watch"] + ([config_path] if config_path else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        data = json.loads(out.stdout or "{}")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return data if isinstance(data, dict) else {"error": "the check printed no result"}


def main(argv: list[str]) -> int:
    """In the child: every sender domain's checks as JSON on stdout."""
    from dataclasses import asdict

    from agent import config
    from agent.dns import domain_check
    from agent.errors import AgentError

    try:
        cfg = config.load(argv[0] if argv else None)
        results = domain_check.run_checks(cfg) if domain_check.sender_domains(cfg) else []
    except AgentError as exc:
        print(json.dumps({"error": exc.message}))
        return 0
    print(json.dumps({"results": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
