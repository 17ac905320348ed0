"""A small smarthost stand-in for `relay-agent demo`: SMTP on 127.0.0.1, STARTTLS, AUTH.

Runtime dependencies only (aiosmtpd, cryptography): the demo must work on an installed
agent without the test extras. It runs on its own event loop in a background thread
(smtpd_thread.py) so the demo's main thread can drive subprocesses and simply wait for messages.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import time
from dataclasses import dataclass

from aiosmtpd.smtp import Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.demo.server_thread import ServerThread
from agent.demo.smtpd_thread import SmtpdThread, TlsSmtp, login_authenticator

HOST = "127.0.0.1"
SERVER_NAME = "relay.demo.invalid"


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


class DemoRelay(SmtpdThread[Received]):
    """STARTTLS required, AUTH only over TLS for one user, every accepted message recorded.

    Use as a context manager; `.port` and `.ca_file` are valid once started.
    """

    def __init__(self, directory: str, username: str, password: str) -> None:
        super().__init__(ServerThread("demo-relay", self._protocol, HOST))
        self.username = username
        self.ca_file = os.path.join(directory, "demo-ca.pem")
        self._dir = directory
        self._auth_failures = 0
        self._users = {username: password}
        self._tls: ssl.SSLContext | None = None

    def start(self) -> None:
        pki = make_pki()
        with open(self.ca_file, "wb") as fh:
            fh.write(pki.ca_pem)
        self._tls = server_context(pki, self._dir)
        super().start()

    def stop(self) -> None:
        self._net.stop(timeout=5)

    def _protocol(self) -> TlsSmtp:
        return TlsSmtp(
            self,
            hostname=SERVER_NAME,
            tls_context=self._tls,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=login_authenticator(self._users, on_failure=self._count_auth_failure),
            loop=asyncio.get_running_loop(),
        )

    def _count_auth_failure(self) -> None:
        with self._cond:
            self._auth_failures += 1

    # aiosmtpd handler hooks, called in the relay's thread.
    async def handle_MAIL(
        self, server: TlsSmtp, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: TlsSmtp, session: Session, envelope: Envelope) -> str:
        msg = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            tls=server.is_tls,
            auth_user=session.auth_data if session.authenticated else None,
            time=time.monotonic(),
        )
        return f"250 2.0.0 Ok: queued as DEMO{self._record(msg):04d}"

    @property
    def auth_failures(self) -> int:
        with self._cond:
            return self._auth_failures
