"""agent.mail.longlines: no line over 998 octets, content preserved, untouched parts byte-identical."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import MessageError
from agent.mail.longlines import has_long_line, make_safe, qp_encode


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def longest(data: bytes) -> int:
    return max(len(line) for line in data.split(b"\r\n"))


def test_no_long_lines_is_returned_as_is() -> None:
    msg = crlf("From: a@example.com\nSubject: hi\n\n" + "x" * 998 + "\n" + "y" * 500 + "\n")
    assert make_safe(msg) is msg
    big = (b"z" * 76 + b"\r\n") * 100_000
    assert make_safe(big) is big


def test_limit_is_998_octets_excluding_crlf() -> None:
    assert not has_long_line(b"a" * 998 + b"\r\nb")
    assert has_long_line(b"a" * 999 + b"\r\nb")
    assert has_long_line(b"b\r\n" + b"a" * 999)


def test_long_subject_is_folded_at_whitespace() -> None:
    subject = " ".join(f"word{i}" for i in range(300))
    msg = crlf(f"From: a@example.com\nSubject: {subject}\n\nbody\n")
    out = make_safe(msg)
    assert longest(out) <= 998
    assert out.endswith(b"\r\n\r\nbody\r\n")
    parsed = email.message_from_bytes(out, policy=email.policy.compat32)
    # unfolding (removing the CRLFs) gives back the exact value
    assert parsed["Subject"].replace("\r\n", "") == subject


def test_address_list_without_spaces_is_folded_after_commas() -> None:
    to = ",".join(f"user{i}@example.net" for i in range(100))
    display = '"Doe,John" <jd@example.net>'
    msg = crlf(f"From: a@example.com\nTo: {display},{to}\n\nbody\n")
    out = make_safe(msg)
    assert longest(out) <= 998
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    addrs = [a.addr_spec for a in parsed["To"].addresses]
    assert addrs == ["jd@example.net"] + [f"user{i}@example.net" for i in range(100)]
    assert parsed["To"].addresses[0].display_name == "Doe,John"


def test_unfoldable_header_is_refused() -> None:
    msg = crlf(f"From: a@example.com\nX-Token: {'t' * 1200}\n\nbody\n")
    with pytest.raises(MessageError, match="X-Token"):
        make_safe(msg)


def test_single_part_text_becomes_quoted_printable() -> None:
    text = "é" * 600 + " trailing space " + "a" * 300 + " \nnext line\n"
    msg = crlf(f"From: a@example.com\nSubject: s\n\n{text}")
    out = make_safe(msg)
    assert longest(out) <= 76
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_payload(decode=True) == text.replace("\n", "\r\n").encode()
    assert out.startswith(b"From: a@example.com\r\nSubject: s\r\n")


def test_existing_8bit_cte_is_replaced() -> None:
    msg = crlf(
        "From: a@example.com\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n" + "ö" * 700 + "\n"
    )
    out = make_safe(msg)
    head = out.split(b"\r\n\r\n")[0]
    assert head.count(b"Content-Transfer-Encoding") == 1
    assert head.count(b"MIME-Version") == 1
    assert b"Content-Transfer-Encoding: quoted-printable" in head
    assert (
        email.message_from_bytes(out).get_payload(decode=True)
        == ("ö" * 700 + "\n").replace("\n", "\r\n").encode()
    )


ATTACHMENT = bytes(range(256)) * 64


def multipart(text_part: str, attachment_b64: bytes, extra_part: bytes = b"") -> bytes:
    return (
        crlf(
            "From: a@example.com\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="=_b"\n\n'
            "preamble\n"
            "--=_b\n"
            "Content-Type: text/html; charset=utf-8\n\n"
            f"{text_part}\n"
            "--=_b\n"
            "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        )
        + attachment_b64
        + extra_part
        + b"\r\n--=_b--\r\nepilogue\r\n"
    )


def test_multipart_only_the_long_part_changes() -> None:
    att = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    html = "<p>" + "long html " * 200 + "</p>"
    msg = multipart(html, att)
    out = make_safe(msg)
    assert longest(out) <= 998
    # the attachment part, delimiters, preamble and epilogue are byte-identical
    tail = msg[msg.index(b"--=_b\r\nContent-Type: application/pdf") :]
    assert out.endswith(tail)
    assert out.startswith(msg[: msg.index(b"--=_b\r\n") + 7])
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    parts = list(parsed.iter_parts())
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[0].get_content() == html
    assert parts[1].get_payload(decode=True) == ATTACHMENT


def test_base64_with_long_lines_is_rewrapped() -> None:
    msg = multipart("short", base64.b64encode(ATTACHMENT))  # one 21 KB line
    out = make_safe(msg)
    assert longest(out) <= 998
    parts = list(email.message_from_bytes(out, policy=email.policy.default).iter_parts())
    assert parts[1].get_payload(decode=True) == ATTACHMENT
    assert parts[1]["Content-Transfer-Encoding"] == "base64"


def test_non_text_8bit_part_with_long_line_becomes_base64() -> None:
    data = b"\x01" * 2000
    msg = crlf("From: a@example.com\nContent-Type: application/octet-stream\n\n") + data
    out = make_safe(msg)
    parsed = email.message_from_bytes(out)
    assert parsed["Content-Transfer-Encoding"] == "base64"
    assert parsed.get_payload(decode=True) == data


def test_message_rfc822_part_with_long_line_is_refused() -> None:
    inner = crlf("From: b@example.com\n\n" + "q" * 1500 + "\n")
    msg = (
        crlf('From: a@example.com\nContent-Type: multipart/mixed; boundary="B"\n\n')
        + crlf("--B\nContent-Type: message/rfc822\n\n")
        + inner
        + b"--B--\r\n"
    )
    with pytest.raises(MessageError, match="line longer than 998 octets in a non-text part"):
        make_safe(msg)


@given(st.binary(max_size=3000))
def test_qp_round_trips_and_stays_short(data: bytes) -> None:
    encoded = qp_encode(data)
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert binascii.a2b_qp(encoded) == data
