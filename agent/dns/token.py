"""The `elastx-mrs=` TXT token that ties a sender domain to an Elastx relay account."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from agent.dns.result import FAIL, PASS, CheckResult
from agent.dns.txt_record import zone_txt

TOKEN_PREFIX = "elastx-mrs="


def token_for(username: str) -> str:
    """What `echo -n USERNAME | sha256sum` gives, as the TXT value Elastx looks for."""
    return TOKEN_PREFIX + hashlib.sha256(username.encode()).hexdigest()


def check_token(domain: str, username: str, txts: Sequence[str], account: str = "default") -> CheckResult:
    """The token of `account` (the one that sends the domain's mail, `username` its relay user)."""
    tokens = [t.strip() for t in txts if t.strip().lower().startswith(TOKEN_PREFIX)]
    if not username:
        fix = zone_txt(domain, TOKEN_PREFIX + "<sha256 hex of relay.username>")
        return CheckResult(domain, "token", FAIL, "relay.username is not set: set it in [relay]", fix)
    want = token_for(username)
    others = [t for t in tokens if t.lower() != want]
    note = f" (also {len(others)} other account token(s): {', '.join(others)})" if others else ""
    who = f"{username} (account {account})"
    if len(others) < len(tokens):  # ours is among them
        return CheckResult(domain, "token", PASS, f"{want} present for {who}{note}")
    detail = f"no {TOKEN_PREFIX} token for {who}{note}"
    return CheckResult(domain, "token", FAIL, detail, zone_txt(domain, want))
