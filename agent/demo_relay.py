"""A small smarthost stand-in for `relay-agent demo`: SMTP on 127.0.0.1, STARTTLS, AUTH.

Runtime dependencies only (aiosmtpd, cryptography): the demo must work on an installed
agent without the test extras. It runs its own event loop in a background thread so the
demo's main thread can drive subprocesses and simply wait for messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
SERVER_NAME = "relay.demo.invalid"

# aiosmtpd logs every command at INFO and a notice at WARNING on each AUTH: not demo output.
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    auth_user: str | None
    time: float  # time.monotonic() at the relay's 250 to the final "."


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki() -> Pki:
    """A throwaway CA and a server certificate from it for localhost / 127.0.0.1.

    EC P-256 keys: generated in microseconds, where RSA would cost the demo a visible pause.
    """
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("relay-agent demo CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Pki(ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem)


def server_context(pki: Pki, directory: str) -> ssl.SSLContext:
    """ssl only loads certificates from files: write them (key 0600) into the demo's temp dir."""
    cert_file = os.path.join(directory, "relay-cert.pem")
    key_file = os.path.join(directory, "relay-key.pem")
    with open(cert_file, "wb") as fh:
        fh.write(pki.cert_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pki.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class _Smtp(SMTP):
    @property
    def is_tls(self) -> bool:
        return self._tls_protocol is not None


class DemoRelay:
    """STARTTLS required, AUTH only over TLS for one user, every accepted message recorded.

    Use as a context manager; `.port` and `.ca_file` are valid once started.
    """

    def __init__(self, directory: str, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self.ca_file = os.path.join(directory, "demo-ca.pem")
        self.port = 0
        self._dir = directory
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._auth_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tls: ssl.SSLContext | None = None

    def __enter__(self) -> DemoRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pki = make_pki()
        with open(self.ca_file, "wb") as fh:
            fh.write(pki.ca_pem)
        self._tls = server_context(pki, self._dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="demo-relay", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop = self._thread = None

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _protocol(self) -> _Smtp:
        return _Smtp(
            self,
            hostname=SERVER_NAME,
            tls_context=self._tls,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=self._authenticate,
            loop=asyncio.get_running_loop(),
        )

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        ok = user == self.username and data.password.decode("utf-8", "replace") == self._password
        if not ok:
            with self._cond:
                self._auth_failures += 1
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    # aiosmtpd handler hooks, called in the relay's thread.
    async def handle_MAIL(
        self, server: _Smtp, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: _Smtp, session: Session, envelope: Envelope) -> str:
        msg = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            tls=server.is_tls,
            auth_user=session.auth_data if session.authenticated else None,
            time=time.monotonic(),
        )
        with self._cond:
            self._messages.append(msg)
            count = len(self._messages)
            self._cond.notify_all()
        return f"250 2.0.0 Ok: queued as DEMO{count:04d}"

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    @property
    def auth_failures(self) -> int:
        with self._cond:
            return self._auth_failures

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """At least n messages, or fewer if the timeout passes first (the caller reports it)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._messages) >= n, timeout)
            return list(self._messages)
