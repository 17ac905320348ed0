"""A local aiosmtpd server run from synchronous code: lifecycle, TLS flag, AUTH, what it received.

The demo's relay (smarthost.py) and the tests' relay stand-in both serve SMTP this way, on
their own event loop in a daemon thread (server_thread.py), so their main thread can drive
subprocesses and simply wait for the messages that arrive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, Self, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from agent.demo.server_thread import ServerThread

M = TypeVar("M")

# aiosmtpd logs every command at INFO and a notice at WARNING on each AUTH: not our output.
logging.getLogger("mail.log").setLevel(logging.ERROR)


class TlsSmtp(SMTP):
    """aiosmtpd's server that tells whether this session has switched to TLS."""

    @property
    def is_tls(self) -> bool:
        return self._tls_protocol is not None


def login_authenticator(
    users: Mapping[str, str], on_failure: Callable[[], None] | None = None
) -> Callable[..., AuthResult]:
    """AUTH PLAIN/LOGIN against `users` (name -> password); a session's auth_data is the name."""

    def check(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        ok = users.get(user) == data.password.decode("utf-8", "replace")
        if not ok and on_failure is not None:
            on_failure()
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return check


class SmtpdThread(Generic[M]):
    """Base of a server whose handler hooks record messages of type M in the server's thread.

    A context manager; `self._cond` guards `self._messages` and whatever else a subclass counts.
    """

    def __init__(self, net: ServerThread) -> None:
        self._net = net
        self._cond = threading.Condition()
        self._messages: list[M] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._net.start()

    def stop(self) -> None:
        self._net.stop()

    @property
    def port(self) -> int:
        return self._net.port

    @property
    def messages(self) -> list[M]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, n: int, timeout: float) -> list[M]:
        """At least n messages, or fewer if the timeout passes first."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._messages) >= n, timeout)
            return list(self._messages)

    def _record(self, msg: M) -> int:
        """Keep `msg`, wake whoever waits for it; its number, from 1."""
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()
            return len(self._messages)
