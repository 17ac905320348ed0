"""A local stand-in for the smarthost: real SMTP over TCP on 127.0.0.1, STARTTLS, AUTH, a test CA.

Every end-to-end test talks to this instead of the Elastx relay. It runs aiosmtpd on its own
event loop in its own thread (agent/demo/smtpd_thread.py, shared with the demo's relay), so sync
tests, async tests and daemon subprocesses can all use it.

Basic use::

    with RelayStandin() as relay:            # STARTTLS + AUTH PLAIN/LOGIN, user "user@example.com"
        relay.port, relay.ca_file            # where to connect, the CA bundle that trusts it
        relay.relay_toml()                   # a ready "[relay]" TOML section (host 127.0.0.1)
        relay.password                       # the password of relay.username (pass it via env)
        ... send mail ...
        msgs = relay.wait_for(1, timeout=5)  # blocks until 1 message is recorded
        msgs[0].data                         # bytes exactly as received (dot-unstuffed)

Pytest fixtures (import them into conftest.py): ``relay_standin`` (default settings) and
``relay_standin_factory`` (``make(**kwargs)``; all made stand-ins are stopped at teardown).

Construction options (keyword-only):
    users        {"user@example.com": "secret"} by default; AUTH is required when non-empty;
                 a wrong password gets 535. AUTH is offered/accepted only over TLS. Several
                 users are several relay accounts: each message records its AUTH user.
    starttls     False: offer no STARTTLS (then no AUTH is possible either).
    tls_implicit True: TLS from the first byte (port-465 style); no STARTTLS.
    bad_cert     "self-signed": the cert is not from the CA in .ca_file;
                 "wrong-name": from that CA but for "wrong.invalid".
    dsn          advertise DSN (default True); RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT accepted.
    smtputf8     advertise SMTPUTF8 (default True).
    pipelining   advertise PIPELINING (default True, as the real relay does); aiosmtpd reads
                 commands line by line, so pipelined commands are answered in order either way.
    port         0 (default): any free port; down()/up() keep the same one.
    on_message   callback(Received), called in the stand-in's thread for each recorded message.

Recorded (read from any thread; lists are copies):
    .messages          list[Received]: mail_from ("" for the null sender <>), rcpt_tos (accepted
                       only), data, mail_options, rcpt_options (one tuple per accepted
                       recipient), peer, connection_id, auth_user, tls, time (monotonic)
    .connections       TCP connections accepted so far
    .mail_from_times   time.monotonic() of every MAIL command (accepted or not)
    .mail_from_times_by_user   the same per AUTH user ({user: [times]}; None: not authenticated)
    .by_user()         {AUTH user: [Received]}: which account sent which transaction
    .auth_attempts     AUTH commands received (any outcome); .auth_users: successful logins

Behaviours, settable at run time from any thread (stages: "ehlo", "mail", "rcpt", "data"; "data"
is the reply to the final "."):
    fail_next(code, text=None, count=1, stage="mail")   answer the next `count` commands of that
                                                        stage with `code`; 421 also closes.
    reject_rcpt(address, code=550, text=None)           always refuse this one recipient
    drop_next(stage="data", count=1)                    close the TCP connection instead of replying
    stall_next(seconds, stage="mail", count=1)          wait before replying (client timeouts)
    down() / up()                                       stop listening and cut open connections /
                                                        listen again on the same port
    push_back(per_second, text=..., senders=None)       a relay enforcing a quota: answer `421 <text>`
                                                        (and close) to a MAIL FROM beyond
                                                        `per_second` accepted in the last second;
                                                        senders: only MAIL FROMs of these addresses
                                                        are refused (all count); None stops it.
                                                        .pushback_times: when it refused (monotonic)
    clear()   forget recorded messages and counters;   reset()   forget behaviours

CLI (runs until killed; one JSON line per message on stdout, the listening line on stderr)::

    python -m tests.support.relay_standin --port 2525 --ca-out /tmp/ca.pem --user u@x --password pw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import Envelope, Session

from agent.demo.server_thread import ServerThread
from agent.demo.smtpd_thread import SmtpdThread, TlsSmtp, login_authenticator

DEFAULT_USER = "user@example.com"
DEFAULT_PASSWORD = "s3cret-Passw0rd"
STAGES = ("ehlo", "mail", "rcpt", "data")


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]
    peer: tuple[str, int]
    connection_id: int
    auth_user: str | None
    tls: bool
    time: float


@dataclass(frozen=True)
class _Action:
    kind: str  # "reply" | "drop" | "stall"
    code: int = 0
    text: str = ""
    seconds: float = 0.0


class _Pki:
    """One test CA per process (key generation is the slow part), and certs made from it."""

    _lock = threading.Lock()
    _instance: _Pki | None = None

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.good = self.ca.issue_cert("localhost", "127.0.0.1")
        self.wrong_name = self.ca.issue_cert("wrong.invalid")
        self.other_ca = trustme.CA()
        self.self_signed = self.other_ca.issue_cert("localhost", "127.0.0.1")

    @classmethod
    def get(cls) -> _Pki:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def server_context(self, bad_cert: str | None) -> ssl.SSLContext:
        certs = {None: self.good, "self-signed": self.self_signed, "wrong-name": self.wrong_name}
        if bad_cert not in certs:
            raise ValueError(f"bad_cert must be None, 'self-signed' or 'wrong-name', not {bad_cert!r}")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certs[bad_cert].configure_cert(ctx)
        return ctx


class _Smtp(TlsSmtp):
    """aiosmtpd's server with our hooks: connection bookkeeping, AUTH counting, DSN parameters."""

    def __init__(self, standin: RelayStandin, connection_id: int, **kwargs: Any) -> None:
        super().__init__(standin, **kwargs)
        self.standin = standin
        self.connection_id = connection_id
        self.raw_mail_options: tuple[str, ...] = ()
        self.raw_rcpt_options: tuple[str, ...] = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.standin._live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.standin._live.discard(self)
        super().connection_lost(exc)

    @property
    def is_tls(self) -> bool:
        return super().is_tls or self.standin.tls_implicit

    async def smtp_AUTH(self, arg: str) -> None:
        self.standin._count_auth()
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        session = self.session
        self.standin._note_mail_from(session.auth_data if session and session.authenticated else None)
        arg, self.raw_mail_options = self._split_params(arg, ("RET", "ENVID"))
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.raw_rcpt_options = self._split_params(arg, ("NOTIFY", "ORCPT"))
        await super().smtp_RCPT(arg)

    def _split_params(self, arg: str | None, dsn_keys: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
        """Record the parameters as sent; hide the DSN ones from aiosmtpd, which knows none of them."""
        if not arg:
            return arg, ()
        head, sep, tail = arg.partition(">")
        if not sep:
            head, _, tail = arg.partition(" ")
        params = tuple(tail.split())
        if not self.standin.dsn:
            return arg, params
        kept = [p for p in params if p.split("=", 1)[0].upper() not in dsn_keys]
        return " ".join([head + sep, *kept]), params


class RelayStandin(SmtpdThread[Received]):
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        starttls: bool = True,
        tls_implicit: bool = False,
        bad_cert: str | None = None,
        dsn: bool = True,
        smtputf8: bool = True,
        pipelining: bool = True,
        port: int = 0,
        on_message: Callable[[Received], None] | None = None,
    ) -> None:
        self.users = {DEFAULT_USER: DEFAULT_PASSWORD} if users is None else dict(users)
        self.starttls = starttls and not tls_implicit
        self.tls_implicit = tls_implicit
        pki = _Pki.get()
        self._tls_context = pki.server_context(bad_cert)
        net = ServerThread(
            "relay-standin",
            self._make_protocol,
            self.host,
            port,
            tls=self._tls_context if tls_implicit else None,
            on_unlisten=self._cut_connections,
        )
        super().__init__(net)
        self.dsn = dsn
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.on_message = on_message
        self._dir = tempfile.mkdtemp(prefix="relay-standin-")
        self.ca_file = os.path.join(self._dir, "ca.pem")
        pki.ca.cert_pem.write_to_path(self.ca_file)
        self._mail_from_times: list[float] = []
        self._mail_from_by_user: dict[str | None, list[float]] = {}
        self._auth_attempts = 0
        self._connections = 0
        self._actions: dict[str, deque[_Action]] = {s: deque() for s in STAGES}
        self._rejects: dict[str, tuple[int, str]] = {}
        self._live: set[_Smtp] = set()
        self._quota: tuple[int, str, frozenset[str] | None] | None = None
        self._accepted_mail: deque[float] = deque()
        self._pushback_times: list[float] = []

    # ----- lifecycle -----

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def down(self) -> None:
        """Stop listening and cut every open connection: the relay is unreachable."""
        self._net.unlisten()

    def up(self) -> None:
        """Listen again, on the same port."""
        self._net.listen()

    def _cut_connections(self) -> None:
        for proto in list(self._live):
            if proto.transport is not None:
                proto.transport.abort()
        self._live.clear()

    protocol: type[_Smtp] = _Smtp  # what each connection is served by (a subclass may change it)
    hostname = "relay-standin.test"

    def _make_protocol(self) -> _Smtp:
        with self._cond:
            self._connections += 1
            conn_id = self._connections
        return self.protocol(
            self,
            conn_id,
            hostname=self.hostname,
            tls_context=self._tls_context if self.starttls else None,
            require_starttls=self.starttls,
            # Implicit TLS: the transport is already encrypted, which aiosmtpd does not see.
            auth_require_tls=not self.tls_implicit,
            authenticator=login_authenticator(self.users),
            enable_SMTPUTF8=self.smtputf8,
            loop=asyncio.get_running_loop(),
        )

    # ----- recorded state -----

    @property
    def connections(self) -> int:
        with self._cond:
            return self._connections

    @property
    def mail_from_times(self) -> list[float]:
        with self._cond:
            return list(self._mail_from_times)

    @property
    def mail_from_times_by_user(self) -> dict[str | None, list[float]]:
        with self._cond:
            return {user: list(times) for user, times in self._mail_from_by_user.items()}

    def by_user(self) -> dict[str | None, list[Received]]:
        out: dict[str | None, list[Received]] = {}
        for msg in self.messages:
            out.setdefault(msg.auth_user, []).append(msg)
        return out

    @property
    def auth_attempts(self) -> int:
        with self._cond:
            return self._auth_attempts

    @property
    def username(self) -> str:
        return next(iter(self.users), DEFAULT_USER)

    @property
    def password(self) -> str:
        return self.users.get(self.username, DEFAULT_PASSWORD)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least n messages are recorded; return them all (TimeoutError if not)."""
        messages = super().wait_for(n, timeout)
        if len(messages) < n:
            raise TimeoutError(f"relay stand-in got {len(messages)} of {n} messages in {timeout}s")
        return messages

    def clear(self) -> None:
        """Forget recorded messages, times and counters (not behaviours)."""
        with self._cond:
            self._messages.clear()
            self._mail_from_times.clear()
            self._mail_from_by_user.clear()
            self._auth_attempts = 0
            self._connections = 0
            self._pushback_times.clear()

    def relay_settings(self, host: str | None = None) -> dict[str, Any]:
        """The [relay] config table that points at this stand-in (no password: see .password)."""
        return {
            "host": host or self.host,
            "port": self.port,
            "tls": "implicit" if self.tls_implicit else "starttls",
            "username": self.username if self.users else "",
            "ca_file": self.ca_file,
            "timeout": 10,
            "data_timeout": 10,
        }

    def relay_toml(self, host: str | None = None) -> str:
        lines = ["[relay]"]
        for key, value in self.relay_settings(host).items():
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this stand-in's CA (for tests that speak SMTP directly)."""
        return ssl.create_default_context(cafile=self.ca_file)

    # ----- behaviours -----

    def fail_next(self, code: int, text: str | None = None, count: int = 1, stage: str = "mail") -> None:
        default = "4.3.0 try again later" if code < 500 else "5.7.1 refused by the relay stand-in"
        self._push(stage, _Action("reply", code, text or default), count)

    def drop_next(self, stage: str = "data", count: int = 1) -> None:
        self._push(stage, _Action("drop"), count)

    def stall_next(self, seconds: float, stage: str = "mail", count: int = 1) -> None:
        self._push(stage, _Action("stall", seconds=seconds), count)

    def push_back(
        self,
        per_second: int | None,
        text: str = "4.7.0 Too many messages, slow down",
        senders: tuple[str, ...] | None = None,
    ) -> None:
        with self._cond:
            if per_second is None:
                self._quota = None
                return
            only = frozenset(a.lower() for a in senders) if senders is not None else None
            self._quota = (per_second, text, only)
            self._accepted_mail.clear()

    @property
    def pushback_times(self) -> list[float]:
        with self._cond:
            return list(self._pushback_times)

    def _over_quota(self, address: str) -> str | None:
        """The push-back reply for this MAIL FROM, or None (then it counts in the window)."""
        now = time.monotonic()
        with self._cond:
            if self._quota is None:
                return None
            per_second, text, only = self._quota
            window = self._accepted_mail
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= per_second and (only is None or address.strip("<>").lower() in only):
                self._pushback_times.append(now)
                return f"421 {text}"
            window.append(now)
            return None

    def reject_rcpt(self, address: str, code: int = 550, text: str | None = None) -> None:
        with self._cond:
            self._rejects[address.lower()] = (code, text or "5.1.1 no such user")

    def reset(self) -> None:
        """Forget all behaviours set with fail_next/drop_next/stall_next/reject_rcpt."""
        with self._cond:
            for q in self._actions.values():
                q.clear()
            self._rejects.clear()

    def _push(self, stage: str, action: _Action, count: int) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        with self._cond:
            self._actions[stage].extend([action] * count)

    def _next_action(self, stage: str) -> _Action | None:
        with self._cond:
            q = self._actions[stage]
            return q.popleft() if q else None

    # ----- called from the server thread -----

    def _count_auth(self) -> None:
        with self._cond:
            self._auth_attempts += 1

    def _note_mail_from(self, user: str | None) -> None:
        now = time.monotonic()
        with self._cond:
            self._mail_from_times.append(now)
            self._mail_from_by_user.setdefault(user, []).append(now)

    async def _apply(self, server: _Smtp, stage: str) -> str | None:
        """Run a queued behaviour for this stage; a reply string overrides the normal answer."""
        action = self._next_action(stage)
        if action is None:
            return None
        if action.kind == "stall":
            await asyncio.sleep(action.seconds)
            return None
        if action.kind == "drop":
            server.transport.abort()
            await asyncio.sleep(3600)  # cancelled by aiosmtpd when the connection is lost
        if action.code == 421:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return f"{action.code} {action.text}"

    async def handle_EHLO(
        self, server: _Smtp, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        override = await self._apply(server, "ehlo")
        if override:
            return [override]
        if self.dsn:
            responses.insert(-1, "250-DSN")
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: _Smtp, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        override = await self._apply(server, "mail")
        if override:
            return override
        refusal = self._over_quota(address)
        if refusal:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return refusal
        envelope.mail_from = address  # "<>" for the null reverse-path: aiosmtpd needs it truthy
        envelope.mail_options = list(server.raw_mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: _Smtp, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        override = await self._apply(server, "rcpt")
        if override:
            return override
        with self._cond:
            reject = self._rejects.get(address.lower())
        if reject:
            return f"{reject[0]} {reject[1]}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(tuple(server.raw_rcpt_options))
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _Smtp, session: Session, envelope: Envelope) -> str:
        override = await self._apply(server, "data")
        if override:
            return override
        msg = Received(
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            peer=tuple(session.peer or ("", 0)),  # type: ignore[arg-type]
            connection_id=server.connection_id,
            auth_user=session.auth_data if session.authenticated else None,
            tls=server.is_tls,
            time=time.monotonic(),
        )
        count = self._record(msg)
        if self.on_message is not None:
            self.on_message(msg)
        return f"250 2.0.0 Ok: queued as S{count:06d}"


# ----- pytest fixtures -----


@pytest.fixture
def relay_standin() -> Iterator[RelayStandin]:
    with RelayStandin() as relay:
        yield relay


@pytest.fixture
def relay_standin_factory() -> Iterator[Callable[..., RelayStandin]]:
    made: list[RelayStandin] = []

    def make(**kwargs: Any) -> RelayStandin:
        relay = RelayStandin(**kwargs)
        relay.start()
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.stop()


# ----- CLI -----


def _print_json(msg: Received) -> None:
    record = {
        "mail_from": msg.mail_from,
        "rcpt_tos": list(msg.rcpt_tos),
        "size": len(msg.data),
        "tls": msg.tls,
        "auth_user": msg.auth_user,
        "connection_id": msg.connection_id,
        "mail_options": list(msg.mail_options),
        "data": msg.data.decode("utf-8", "replace"),
    }
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A local TLS relay stand-in (prints one JSON line per message)"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ca-out", help="write the CA certificate (PEM) here")
    parser.add_argument("--user", default=DEFAULT_USER)
    parser.add_argument("--password", default=DEFAULT_PASSWORD)
    parser.add_argument("--no-auth", action="store_true", help="accept mail without AUTH")
    parser.add_argument("--implicit-tls", action="store_true")
    args = parser.parse_args(argv)
    users = {} if args.no_auth else {args.user: args.password}
    relay = RelayStandin(users=users, port=args.port, tls_implicit=args.implicit_tls, on_message=_print_json)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with relay:
        if args.ca_out:
            shutil.copyfile(relay.ca_file, args.ca_out)
        info = {"listening": f"{relay.host}:{relay.port}", "ca_file": args.ca_out or relay.ca_file}
        sys.stderr.write(json.dumps(info) + "\n")
        sys.stderr.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
