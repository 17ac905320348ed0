from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import MessageError, UnknownRecipientError
from agent.mail.addressing import (
    local_names,
    parse_address_list,
    parse_sender,
    resolve_all,
    resolve_recipient,
    rewrite_sender,
)

NAMES = local_names("web1.example.net")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a@example.com", ["a@example.com"]),
        ("Name <a@example.com>", ["a@example.com"]),
        ('"Quoted, Name" <a@example.com>, b@example.org', ["a@example.com", "b@example.org"]),
        ("a@example.com (a comment, with comma)", ["a@example.com"]),
        ("undisclosed-recipients:;", []),
        (
            "friends: a@example.com, B <b@example.com>;, c@example.com",
            ["a@example.com", "b@example.com", "c@example.com"],
        ),
        ("root", ["root"]),
        ("  root ,  , www-data  ", ["root", "www-data"]),
        ('"john doe"@example.com', ['"john doe"@example.com']),
        ("<@relay.example:a@example.com>", ["a@example.com"]),
        ("=?utf-8?q?J=C3=B6rg?= <j@example.com>", ["j@example.com"]),
        # a bare backslash escapes, as Postfix's tokenizer reads it: one mailbox, not two
        ("Doe\\, John <j@example.com>, b@example.org", ["j@example.com", "b@example.org"]),
        ("Doe\\<x\\> <j@example.com>", ["j@example.com"]),
        ("", []),
    ],
)
def test_parse_address_list(text: str, expected: list[str]) -> None:
    assert parse_address_list(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a@example.com\r\nBcc: x@evil",
        "a\0@example.com",
        "Name <a@example.com",
        '"open <a@b>',
        "a@",
        "@b.com",
        "a@b..com",
        "Name <a@example.com> trailing",
        "a@exa mple.com",
        "(unclosed a@b",
        "a\\,b@example.com",  # one escaped chunk, and no backslash may stay in a bare local part
        "a@example.com\\",  # an escape with nothing after it
    ],
)
def test_unparseable_addresses_are_message_errors(text: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_address_list(text)
    assert info.value.exit_code == 65 and "\n" not in info.value.message


def test_parse_sender_null_and_plain() -> None:
    assert parse_sender("<>") == "" and parse_sender("") == ""
    assert parse_sender("Me <me@example.com>") == "me@example.com"
    with pytest.raises(MessageError):
        parse_sender("a@example.com, b@example.com")


ALIASES = {"root": "ops@example.com", "www-data": "web@example.com, root", "postmaster": "root"}


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("root", ["ops@example.com"]),
        ("ROOT", ["ops@example.com"]),
        ("root@localhost", ["ops@example.com"]),
        ("root@web1.example.net", ["ops@example.com"]),
        ("root@WEB1", ["ops@example.com"]),
        ("root+cron", ["ops@example.com"]),
        ("www-data", ["web@example.com", "ops@example.com"]),
        ("postmaster", ["ops@example.com"]),
        ("root@example.com", ["root@example.com"]),
    ],
)
def test_resolve_recipient(addr: str, expected: list[str]) -> None:
    assert resolve_recipient(addr, ALIASES, NAMES) == expected


def test_unknown_local_recipient_and_default() -> None:
    with pytest.raises(UnknownRecipientError) as info:
        resolve_recipient("nobody", ALIASES, NAMES)
    assert info.value.exit_code == 67
    assert (
        info.value.message == "unknown local recipient nobody: add it to [aliases] (or set aliases.default)"
    )
    assert resolve_recipient("nobody", {**ALIASES, "default": "catch@example.com"}, NAMES) == [
        "catch@example.com"
    ]


def test_alias_loops_are_refused() -> None:
    with pytest.raises(UnknownRecipientError):
        resolve_recipient("a", {"a": "b", "b": "a"}, NAMES)
    with pytest.raises(UnknownRecipientError):
        resolve_recipient("a", {"a": "a"}, NAMES)


def test_resolve_all_dedupes() -> None:
    assert resolve_all(["root", "ops@example.com", "x@y.org"], ALIASES, NAMES) == [
        "ops@example.com",
        "x@y.org",
    ]


@pytest.mark.parametrize(
    ("addr", "rewrite", "default_from", "expected"),
    [
        ("root", True, "noreply@example.com", "noreply@example.com"),
        ("root@localhost", True, "noreply@example.com", "noreply@example.com"),
        ("cron@web1.example.net", True, "noreply@example.com", "noreply@example.com"),
        ("root", True, "", "root@web1.example.net"),
        ("me@example.com", True, "noreply@example.com", "me@example.com"),
        ("", True, "noreply@example.com", ""),
        ("root", False, "noreply@example.com", "root@web1.example.net"),
        ("root@localhost", False, "noreply@example.com", "root@localhost"),
    ],
)
def test_rewrite_sender(addr: str, rewrite: bool, default_from: str, expected: str) -> None:
    assert rewrite_sender(addr, default_from, rewrite, NAMES, "web1.example.net") == expected


@given(st.text(max_size=60))
def test_arbitrary_text_raises_only_message_error(text: str) -> None:
    try:
        addrs = parse_address_list(text)
    except MessageError as exc:
        assert "\n" not in exc.message and "\r" not in exc.message
        return
    for a in addrs:
        assert a and not any(c in a for c in "\r\n\0")


@given(st.text(alphabet='ab@.,;:<>()"\\ \tx', max_size=40))
def test_structural_characters_raise_only_message_error(text: str) -> None:
    with contextlib.suppress(MessageError):
        parse_address_list(text)


@given(st.text(alphabet='ab@.,;:<>()"\\ \tx\x0b\u3000é', max_size=30))
def test_fast_paths_agree_with_the_general_parser(text: str) -> None:
    """`a@b` and `Name <a@b>` skip _chunks/_mailbox: same addresses, same errors."""
    from agent.mail.addressing import _chunks, _mailbox

    def outcome(parse: Callable[[], list[str]]) -> object:
        try:
            return parse()
        except MessageError as exc:
            return exc.message

    assert outcome(lambda: parse_address_list(text)) == outcome(
        lambda: [_mailbox(chunk) for chunk in _chunks(text) if chunk.strip()]
    )
