"""Connection-level failures: RelayError, and a redacted one-line reason for any exception (pure).

Everything that goes wrong with the connection itself (connect, TLS, EHLO, AUTH incl. 535, 421,
timeouts, a dropped link) is a RelayError, and the caller treats every recipient without a result
as temporary.
"""

from __future__ import annotations

import os
import socket
import ssl

import aiosmtplib

from agent.errors import TempError
from agent.relay.results import one_line, reply_text


class RelayError(TempError):
    """The connection failed (not one recipient): defer everything not yet recorded.

    stage: "connect" | "tls" | "ehlo" | "starttls" | "auth" | "reuse" | "rset" | "mail" | "rcpt" |
    "data" | "quit". "reuse" means the relay had closed an idle connection before this transaction
    began: nothing was attempted, so the caller may reconnect and retry at once.
    """

    def __init__(self, stage: str, reply: str, relay: str, *, names_relay: bool = False) -> None:
        # names_relay: the reply already names the relay host (a resolver failure), say it once
        super().__init__(reply if names_relay else f"{stage} failed at {relay}: {reply}")
        self.stage = stage
        self.reply = reply
        self.relay = relay

    def where(self) -> str:
        """Where delivery stopped, for `status` and `mailq` while it is suspended."""
        return f"connect to {self.relay}: {self.reply}" if self.stage == "connect" else str(self)


def relay_failure(stage: str, exc: BaseException, host: str, relay: str, password: str | None) -> RelayError:
    """The RelayError for a transport/protocol failure, its reason redacted."""
    unresolved = unresolved_reason(exc, host)
    if unresolved is not None:
        return RelayError(stage, redact(unresolved, password), relay, names_relay=True)
    return RelayError(stage, redact(describe(exc), password), relay)


def unresolved_reason(exc: BaseException, host: str) -> str | None:
    """The reason "cannot resolve relay host X: ..." when the resolver failed, else None.

    gaierror's errno is an EAI_* code, not an errno: os.strerror would say "Unknown error -2";
    its strerror is gai_strerror's text.
    """
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, socket.gaierror):
            return one_line(f"cannot resolve relay host {host}: {chain.strerror or chain}")
        chain = chain.__cause__ or chain.__context__
    return None


def describe(exc: BaseException) -> str:
    """A one-line reason; SSL and socket errors often hide the useful part in a cause."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_text(exc.code, exc.message)
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, socket.gaierror):
            return one_line(f"cannot resolve host: {chain.strerror or chain}")
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
