"""DKIM signing, proven by independent verifiers: Perl Mail::DKIM (keys served by dnsmasq) and dkimpy.

Ed25519 is not supported by Debian 12's Mail::DKIM, so Ed25519 signatures are checked by
dkimpy and by tests.support.verify.verify_independent (cryptography, own canonicalization).
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, DkimKey, from_dict
from agent.dkim import key_files
from agent.dkim.signing import CANON, Signer, include_headers, parse, relaxed_body
from agent.errors import ConfigError, MessageError
from agent.mail import longlines
from tests.support.dnsmasq import DnsServer
from tests.support.verify import (
    dkim_dns_records,
    verify_dkimpy,
    verify_dkimpy_results,
    verify_independent,
    verify_perl,
    verify_perl_results,
)

FIXED_T = 1_767_225_600


def _cfg(entries: list[tuple[str, str, Path]]) -> Config:
    return from_dict({"dkim": [{"domain": d, "selector": s, "key_file": str(p)} for d, s, p in entries]})


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    for name, alg in [("rsa", "rsa"), ("ed", "ed25519"), ("other", "rsa")]:
        key_files.write_private_key(key_files.generate(alg, 2048), str(d / f"{name}.pem"))
    return d


@pytest.fixture(scope="module")
def cfg(keydir: Path) -> Config:
    return _cfg(
        [
            ("example.com", "rsa2026", keydir / "rsa.pem"),
            ("example.com", "ed2026", keydir / "ed.pem"),
            ("other.org", "o1", keydir / "other.pem"),
        ]
    )


@pytest.fixture(scope="module")
def rsa_only(keydir: Path) -> Signer:
    return Signer(_cfg([("example.com", "rsa2026", keydir / "rsa.pem")]))


@pytest.fixture(scope="module")
def records(cfg: Config) -> dict[str, list[tuple[str, ...]]]:
    return dkim_dns_records(cfg)


@pytest.fixture(scope="module")
def dns(records: dict[str, list[tuple[str, ...]]]) -> Iterator[DnsServer]:
    with DnsServer(records) as server:
        yield server


@pytest.fixture(scope="module")
def pubkeys(cfg: Config) -> dict[str, str]:
    return {
        key_files.record_name(k.domain, k.selector): key_files.public_key_b64(
            key_files.load_private_key(k.key_file)
        )
        for k in cfg.dkim
    }


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


PLAIN = crlf(
    "From: Alice <alice@example.com>\n"
    "To: Bob <bob@example.net>\n"
    "Subject: plain text\n"
    "Date: Thu, 01 Jan 2026 00:00:00 +0000\n"
    "Message-ID: <1@example.com>\n"
    "X-Mailer: test\n"
    "\n"
    "Hello Bob,\n"
    "trailing spaces  \n"
    "\n"
    "\n"
)


def assert_verifies_rsa(signed: bytes, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]) -> None:
    ok, detail = verify_perl(signed, dns.port)
    assert ok, detail
    assert verify_dkimpy(signed, records)


def test_plain_text_verifies(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    signed = rsa_only.sign(PLAIN, "example.com")
    assert signed.endswith(PLAIN)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;")
    assert_verifies_rsa(signed, dns, records)


def test_verifiers_reject_tampering(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    signed = rsa_only.sign(PLAIN, "example.com")
    for bad in (signed.replace(b"Hello Bob", b"Hello Bib"), signed.replace(b"plain text", b"plain texT")):
        ok, detail = verify_perl(bad, dns.port)
        assert not ok, detail
        assert not verify_dkimpy(bad, records)


def test_signature_tags(rsa_only: Signer) -> None:
    before = int(time.time())
    signed = rsa_only.sign(PLAIN, "example.com")
    header = signed.split(b"\r\nFrom:")[0].replace(b"\r\n", b"")
    tags = dict(t.strip().split(b"=", 1) for t in header.split(b":", 1)[1].split(b";"))
    assert tags[b"s"] == b"rsa2026"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert b"l" not in tags and b"x" not in tags
    assert before <= int(tags[b"t"]) <= int(time.time())
    # From is over-signed; X-Mailer is not signed
    assert re.sub(rb"\s", b"", tags[b"h"]) == b"from:to:subject:date:message-id:from"


def test_over_signed_from_blocks_an_added_from(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    signed = rsa_only.sign(PLAIN, "example.com")
    forged = signed.replace(b"\r\n\r\nHello", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\nHello", 1)
    assert not verify_perl(forged, dns.port)[0]
    assert not verify_dkimpy(forged, records)


def test_signature_is_byte_identical_to_plain_dkimpy(
    rsa_only: Signer, keydir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = rsa_only.sign(PLAIN, "example.com", timestamp=FIXED_T)
    monkeypatch.setattr(dkim.time, "time", lambda: float(FIXED_T))
    theirs = dkim.sign(
        PLAIN,
        b"rsa2026",
        b"example.com",
        (keydir / "rsa.pem").read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(include_headers(parse(PLAIN).headers)),
    )
    assert ours == theirs + PLAIN


MULTIPART_ATTACHMENT = bytes(range(256)) * 40


def multipart_message() -> bytes:
    att = base64.encodebytes(MULTIPART_ATTACHMENT).replace(b"\n", b"\r\n")
    return (
        crlf(
            "From: alice@example.com\n"
            "To: bob@example.net\n"
            "Subject: report\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="BOUNDARY"\n'
            "\n"
            "--BOUNDARY\n"
            "Content-Type: text/plain; charset=us-ascii\n"
            "\n"
            "see attached\n"
            "--BOUNDARY\n"
            "Content-Type: application/octet-stream\n"
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="data.bin"\n'
            "\n"
        )
        + att
        + b"--BOUNDARY--\r\n"
    )


def test_multipart_with_binary_attachment(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    signed = rsa_only.sign(multipart_message(), "example.com")
    assert_verifies_rsa(signed, dns, records)
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    attachment = next(p for p in parsed.walk() if p.get_filename() == "data.bin")
    assert attachment.get_payload(decode=True) == MULTIPART_ATTACHMENT


def test_8bit_utf8_body_and_rfc2047_headers(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    msg = crlf(
        "From: =?utf-8?q?J=C3=B6rg_=C3=85str=C3=B6m?= <jorg@example.com>\n"
        "To: =?utf-8?b?w4VzYQ==?= <asa@example.net>\n"
        "Subject: =?utf-8?q?R=C3=A4ksm=C3=B6rg=C3=A5s?=\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Hej! Smörgåsbord, 日本語, emoji 🎉\n"
    )
    signed = rsa_only.sign(msg, "example.com")
    assert "🎉".encode() in signed
    assert_verifies_rsa(signed, dns, records)


def test_long_lines_made_safe_then_signed(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    long_text = "word " * 400 + "é" * 300
    long_to = ", ".join(f"user{i}@example.net" for i in range(80))
    msg = crlf(
        f"From: alice@example.com\nTo: {long_to}\nSubject: long\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        f"short line\n{long_text}\nend\n"
    )
    safe = longlines.make_safe(msg)
    assert max(len(line) for line in safe.split(b"\r\n")) <= 998
    signed = rsa_only.sign(safe, "example.com")
    assert_verifies_rsa(signed, dns, records)
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().replace("\r\n", "\n") == f"short line\n{long_text}\nend\n"
    assert len(parsed["To"].addresses) == 80


def test_folded_headers(rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]) -> None:
    msg = crlf(
        "From: Alice\n  Example <alice@example.com>\n"
        "To: bob@example.net,\n\tcarol@example.net\n"
        "Subject: a subject that\n   was folded   twice\n   here\n"
        "\n"
        "body\n"
    )
    signed = rsa_only.sign(msg, "example.com")
    assert_verifies_rsa(signed, dns, records)
    # relaxed canonicalization: refolding in transit does not break the signature
    refolded = signed.replace(b"that\r\n   was", b"that was")
    assert_verifies_rsa(refolded, dns, records)


def test_bcc_is_not_signed_so_removing_it_keeps_the_signature(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    with_bcc = PLAIN.replace(b"X-Mailer", b"Bcc: hidden@example.net\r\nX-Mailer")
    signed = rsa_only.sign(with_bcc, "example.com")
    sig = signed.split(b"\r\nFrom:")[0]
    h_tag = b"".join(sig.split()).split(b";h=", 1)[1].split(b";", 1)[0]  # not b=: base64 may hold "bcc"
    assert b"from" in h_tag.lower() and b"bcc" not in h_tag.lower()
    without = signed.replace(b"Bcc: hidden@example.net\r\n", b"")
    assert_verifies_rsa(without, dns, records)
    assert_verifies_rsa(rsa_only.sign(PLAIN, "example.com"), dns, records)


def test_existing_signature_is_kept_and_both_verify(
    cfg: Config, keydir: Path, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    foreign = dkim.sign(PLAIN, b"o1", b"other.org", (keydir / "other.pem").read_bytes())
    pre_signed = foreign + PLAIN
    signer = Signer(_cfg([("example.com", "rsa2026", keydir / "rsa.pem")]))
    signed = signer.sign(pre_signed, "example.com")
    assert signed.endswith(pre_signed)
    assert [name for name, _ in verify_perl_results(signed, dns.port)] == [
        "rsa2026._domainkey.example.com",
        "o1._domainkey.other.org",
    ]
    assert_verifies_rsa(signed, dns, records)
    assert verify_dkimpy_results(signed, records) == [True, True]


def test_dual_signing_rsa_and_ed25519(
    cfg: Config, dns: DnsServer, records: dict[str, list[tuple[str, ...]]], pubkeys: dict[str, str]
) -> None:
    signed = Signer(cfg).sign(PLAIN, "example.com")
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=ed25519-sha256" in signed
    assert verify_dkimpy_results(signed, records) == [True, True]
    assert verify_independent(signed, pubkeys, 0)
    assert verify_independent(signed, pubkeys, 1)
    perl = dict(verify_perl_results(signed, dns.port))
    assert perl["rsa2026._domainkey.example.com"] == "pass"
    # Debian 12's Mail::DKIM has no Ed25519: it must not claim a pass (nor do we rely on it)
    assert perl["ed2026._domainkey.example.com"] != "pass"
    tampered = signed.replace(b"Hello Bob", b"Hello Bib")
    assert not verify_independent(tampered, pubkeys, 1)
    assert verify_dkimpy_results(tampered, records) == [False, False]


def test_parent_domain_key_signs_subdomain(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    msg = PLAIN.replace(b"alice@example.com", b"x@mail.example.com")
    assert rsa_only.has_key_for("mail.example.com")
    signed = rsa_only.sign(msg, "mail.example.com")
    assert b" d=example.com;" in signed
    assert_verifies_rsa(signed, dns, records)


def test_no_key_returns_message_unchanged(rsa_only: Signer) -> None:
    assert not rsa_only.has_key_for("example.org")
    assert not rsa_only.has_key_for("com")
    assert not rsa_only.has_key_for("notexample.com")
    assert rsa_only.sign(PLAIN, "example.org") is PLAIN


def test_message_without_from_is_refused(rsa_only: Signer) -> None:
    with pytest.raises(MessageError, match="From"):
        rsa_only.sign(b"To: a@example.net\r\n\r\nhi\r\n", "example.com")


def test_signer_loads_keys_at_construction(tmp_path: Path, keydir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        Signer(_cfg([("example.com", "s", tmp_path / "missing.pem")]))
    twice = [("example.com", "s", keydir / "rsa.pem")] * 2
    with pytest.raises(ConfigError, match="configured twice"):
        Signer(_cfg(twice))
    assert Signer(Config(dkim=(DkimKey("example.com", "s", str(keydir / "ed.pem")),))).has_key_for(
        "example.com"
    )


def test_large_message_signs_and_verifies(
    rsa_only: Signer, dns: DnsServer, records: dict[str, list[tuple[str, ...]]]
) -> None:
    body = (b"x" * 76 + b"\r\n") * 40_000  # ~3 MB
    msg = PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    signed = rsa_only.sign(msg, "example.com")
    assert verify_dkimpy(signed, records)
    assert verify_perl(signed, dns.port)[0]


BODY_PARTS = [b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"b c", b"."]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(BODY_PARTS), max_size=40))
def test_relaxed_body_is_dkimpys_byte_for_byte(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert relaxed_body(body) == CANON.canonicalize_body(body)
