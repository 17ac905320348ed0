from __future__ import annotations

import os
import time

import pytest

from agent.errors import MessageError
from agent.mail import headers

MSG = (
    b"From: Me <me@example.com>\r\nTo: a@example.com,\r\n  B <b@example.com>\r\nCc: c@example.com\r\n"
    b"Bcc: hidden@example.com\r\nSubject: hi\r\n\r\nbody: not a header\r\n"
)


def test_parse_and_unfold() -> None:
    fields, end = headers.parse(MSG)
    assert [n for n, _ in fields] == [b"from", b"to", b"cc", b"bcc", b"subject"]
    assert MSG[end:].startswith(b"\r\n\r\nbody") is False and MSG[end:].startswith(b"\r\nbody")
    assert headers.get_all(MSG, "TO") == ["a@example.com,  B <b@example.com>"]  # unfolding keeps the WSP


def test_body_only_input_has_no_headers() -> None:
    assert headers.parse(b"hi\n") == ([], 0)
    assert headers.parse(b"From me to you: a poem\n") == ([], 0)


def test_recipients_for_t_and_bcc_removal() -> None:
    assert headers.recipients_for_t(MSG) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "hidden@example.com",
    ]
    stripped = headers.strip_bcc(MSG)
    assert b"hidden" not in stripped and stripped.endswith(b"\r\n\r\nbody: not a header\r\n")
    assert b"Subject: hi\r\n" in stripped


def test_resent_headers_take_over() -> None:
    msg = (
        b"To: orig@example.com\nResent-From: me@example.com\nResent-To: new@example.com\n"
        b"Resent-Bcc: sec@example.com\n\nx\n"
    )
    assert headers.recipients_for_t(msg) == ["new@example.com", "sec@example.com"]
    assert b"sec@" not in headers.strip_bcc(msg) and b"Resent-To" in headers.strip_bcc(msg)


def test_t_with_bad_address_is_message_error() -> None:
    with pytest.raises(MessageError):
        headers.recipients_for_t(b"To: Broken <a@example.com\n\nx\n")


def test_add_missing_to_body_only_message() -> None:
    out = headers.add_missing(b"hi\n", "root@example.com", "", "host.example.com", 0.0)
    head, _, body = out.partition(b"\n\n")
    assert body == b"hi\n"
    assert b"From: root@example.com" in head and b"Date: " in head and b"Message-ID: <" in head
    assert b"\r" not in out  # LF message: LF fields


def test_add_missing_keeps_existing_and_crlf() -> None:
    msg = b"From: x@example.com\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n"
    assert headers.add_missing(msg, "y@example.com", "Y", "h", time.time()) == msg
    out = headers.add_missing(b"Subject: s\r\n\r\nbody\r\n", "y@example.com", "Cron Daemon", "h.example", 0)
    assert out.startswith(b"Subject: s\r\nFrom: Cron Daemon <y@example.com>\r\nDate: ")
    assert out.endswith(b"\r\n\r\nbody\r\n") and b"@h.example>\r\n" in out


def test_headers_without_blank_line_or_final_newline() -> None:
    out = headers.add_missing(b"Subject: s", "a@b.c", "", "h", 0)
    assert out.startswith(b"Subject: s\r\nFrom: a@b.c\r\n") and out.endswith(b"\r\n\r\n")
    glued = headers.add_missing(b"Subject: s\nnot a header line\n", "a@b.c", "", "h", 0)
    assert glued.endswith(b"\n\nnot a header line\n")


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("CronDaemon", "CronDaemon"),
        ("Doe, John", '"Doe, John"'),
        ('Say "hi"', '"Say \\"hi\\""'),
        ("Jörg", "=?utf-8?b?SsO2cmc=?="),
    ],
)
def test_display_name_quoting(name: str, shown: str) -> None:
    assert headers.display_name(name) == shown


def test_null_sender_gets_mailer_daemon_from() -> None:
    assert b"From: MAILER-DAEMON@h.example\r\n" in headers.add_missing(b"", "", "", "h.example", 0)


def test_date_is_locale_proof_rfc5322() -> None:
    os.environ["TZ"] = "Europe/Stockholm"
    time.tzset()
    try:
        assert headers.format_date(1700000000.0) == "Tue, 14 Nov 2023 23:13:20 +0100"
        assert headers.format_date(1690000000.0) == "Sat, 22 Jul 2023 06:26:40 +0200"
    finally:
        del os.environ["TZ"]
        time.tzset()


def test_message_ids_are_unique() -> None:
    ids = {headers.make_message_id("h.example", 0) for _ in range(100)}
    assert len(ids) == 100 and all(
        i.startswith("<19700101000000.") and i.endswith("@h.example>") for i in ids
    )


@pytest.mark.parametrize(
    ("msg", "domain"),
    [
        (b"From: A <a@Example.COM>\n\nx", "example.com"),
        (b"Subject: x\n\nx", ""),
        (b"From: root\n\n", ""),
        (b"From: Broken <a@b\n\n", ""),
        (b"From: a@one.example, b@two.example\n\n", "one.example"),
    ],
)
def test_from_domain(msg: bytes, domain: str) -> None:
    assert headers.from_domain(msg) == domain


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"From: root (Cron Daemon)", b"From: Cron Daemon <noreply@example.com>"),
        (b'From: "Cron, Daemon" <root@localhost>', b'From: "Cron, Daemon" <noreply@example.com>'),
        (b"From: root", b"From: noreply@example.com"),
        (b"From: Me <me@example.org>", b"From: Me <me@example.org>"),
    ],
)
def test_rewrite_from_local_addresses(line: bytes, expected: bytes) -> None:
    def rewrite(addr: str) -> str:
        return "noreply@example.com" if "." not in addr else addr

    msg = b"To: x@example.org\r\n" + line + b"\r\nSubject: s\r\n\r\nbody\r\n"
    assert (
        headers.rewrite_from(msg, rewrite)
        == b"To: x@example.org\r\n" + expected + b"\r\nSubject: s\r\n\r\nbody\r\n"
    )
