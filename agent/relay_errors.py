"""Connection-level failures: RelayError, and a redacted one-line reason for any exception (pure).

Everything that goes wrong with the connection itself (connect, TLS, EHLO, AUTH incl. 535, 421,
timeouts, a dropped link) is a RelayError, and the caller treats every recipient without a result
as temporary.
"""

from __future__ import annotations

import os
import ssl

import aiosmtplib

from agent.errors import TempError
from agent.relay_results import one_line, reply_text


class RelayError(TempError):
    """The connection failed (not one recipient): defer everything not yet recorded.

    stage: "connect" | "tls" | "ehlo" | "starttls" | "auth" | "reuse" | "rset" | "mail" | "rcpt" |
    "data" | "quit". "reuse" means the relay had closed an idle connection before this transaction
    began: nothing was attempted, so the caller may reconnect and retry at once.
    """

    def __init__(self, stage: str, reply: str, relay: str) -> None:
        super().__init__(f"{stage} failed at {relay}: {reply}")
        self.stage = stage
        self.reply = reply
        self.relay = relay


def describe(exc: BaseException) -> str:
    """A one-line reason; SSL and socket errors often hide the useful part in a cause."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_text(exc.code, exc.message)
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, ssl.SSLCertVerificationError):
            return one_line(f"certificate verification failed: {chain.verify_message}")
        if isinstance(chain, ssl.SSLError):
            return one_line(f"TLS error: {chain.reason or chain}")
        if isinstance(chain, OSError) and chain.errno:
            return os.strerror(chain.errno)
        chain = chain.__cause__
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "timed out"
    return one_line(str(exc)) or type(exc).__name__


def is_tls_error(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, ssl.SSLError):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def redact(text: str, password: str | None) -> str:
    # Reasons go to logs and status.json, which must never hold the password.
    if password and password in text:
        text = text.replace(password, "***")
    return text
