"""What a relay transaction yields for each recipient, from the relay's replies (pure).

The rule: only a 5xx reply to MAIL, RCPT or the final "." is permanent; any other refusal is temporary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiosmtplib.response import SMTPResponse

Outcome = Literal["sent", "temp", "perm"]


@dataclass(frozen=True)
class RcptResult:
    address: str
    outcome: Outcome
    reply: str  # "250 2.0.0 Ok" / "550 5.1.1 no such user"


@dataclass(frozen=True)
class TxResult:
    results: tuple[RcptResult, ...]
    relay: str  # "host[ip]:port"


def one_line(text: str) -> str:
    return " ".join(text.split())


def reply_text(code: int, message: str) -> str:
    return one_line(f"{code} {message}")


def _refused(code: int) -> Outcome:
    return "perm" if code >= 500 else "temp"


def refuse_all(resp: SMTPResponse, recipients: Sequence[str]) -> list[RcptResult]:
    """MAIL was refused: its reply decides for every recipient."""
    reply = reply_text(resp.code, resp.message)
    return [RcptResult(r, _refused(resp.code), reply) for r in recipients]


def rcpt_results(
    recipients: Sequence[str], replies: list[SMTPResponse]
) -> tuple[list[RcptResult], list[str]]:
    """The refused recipients' results, and the accepted recipients (who wait for the final reply)."""
    results: list[RcptResult] = []
    accepted: list[str] = []
    for rcpt, resp in zip(recipients, replies, strict=True):
        if resp.code in (250, 251):
            accepted.append(rcpt)
        else:
            results.append(RcptResult(rcpt, _refused(resp.code), reply_text(resp.code, resp.message)))
    return results, accepted


def final_results(resp: SMTPResponse, accepted: list[str]) -> list[RcptResult]:
    """The reply to the final "." (or a refused DATA) decides for every accepted recipient."""
    reply = reply_text(resp.code, resp.message)
    outcome: Outcome = "sent" if resp.code == 250 else _refused(resp.code)
    return [RcptResult(r, outcome, reply) for r in accepted]
