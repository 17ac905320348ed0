from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import MessageError, UsageError
from agent.submit.args import Options, parse


def test_debian_cron_flags() -> None:
    o = parse(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    assert (o.full_name, o.ignore_dots, o.extract, o.recipients, o.mode) == (
        "CronDaemon",
        True,
        False,
        ("root",),
        "send",
    )


def test_cronie_flags() -> None:
    o = parse(["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"])
    assert (o.sender, o.extract, o.ignore_dots, o.recipients) == ("root", True, True, ())


def test_glued_and_separate_values() -> None:
    assert parse(["-oi", "-fme@example.com", "-t"]).sender == "me@example.com"
    assert parse(["-r", "me@example.com"]).sender == "me@example.com"
    assert parse(["-F", "Cron Daemon"]).full_name == "Cron Daemon"
    assert parse(["-C/etc/x.toml"]).config == "/etc/x.toml"
    assert parse(["-C", "/etc/x.toml"]).config == "/etc/x.toml"


def test_oi_sets_ignore_dots_but_other_o_options_do_not() -> None:
    assert parse(["-oi"]).ignore_dots
    assert not parse(["-oem", "-odb", "-oee", "-oep", "-odi"]).ignore_dots


def test_bundled_boolean_flags() -> None:
    o = parse(["-ti", "a@example.com"])
    assert o.extract and o.ignore_dots and o.recipients == ("a@example.com",)


@pytest.mark.parametrize("flag", ["-Ac", "-Am", "-A"])
def test_which_configuration_is_accepted(flag: str) -> None:
    o = parse([flag, "-t", "a@example.com"])
    assert o.extract and o.recipients == ("a@example.com",) and o.mode == "send"


def test_a_configuration_other_than_c_or_m_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="-A takes c or m"):
        parse(["-Ax", "a@example.com"])


def test_double_dash_ends_options() -> None:
    o = parse(["-f", "a@example.com", "--", "-weird@example.com", "b@example.com"])
    assert o.recipients == ("-weird@example.com", "b@example.com")


def test_options_after_recipients_are_still_options() -> None:
    o = parse(["a@example.com", "-t"])
    assert o.extract and o.recipients == ("a@example.com",)


def test_commas_split_recipient_arguments() -> None:
    o = parse(["a@example.com,b@example.com", '"Doe, J" <c@example.com>, d'])
    assert o.recipients == ("a@example.com", "b@example.com", '"Doe, J" <c@example.com>', "d")


def test_mutt_dsn_flags() -> None:
    o = parse(
        ["-oem", "-oi", "-B8BITMIME", "-f", "a@x.org", "-N", "success,failure", "-R", "hdrs", "--", "b@y.org"]
    )
    assert o.dsn() == (("notify", "SUCCESS,FAILURE"), ("ret", "HDRS"))
    assert parse(["-N", "never", "-V", "id-1", "x"]).dsn() == (("notify", "NEVER"), ("envid", "id-1"))


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["-bs"], "smtp"),
        (["-bs", "-odb", "-oem"], "smtp"),
        (["-bp"], "list"),
        (["-q"], "flush"),
        (["-q30m"], "flush"),
        (["-bi"], "newaliases"),
        (["-bm", "x"], "send"),
        (["-I"], "newaliases"),
    ],
)
def test_modes(argv: list[str], mode: str) -> None:
    assert parse(argv).mode == mode


def test_modes_by_program_name() -> None:
    assert parse([], "/usr/bin/mailq").mode == "list"
    assert parse(["-v"], "/usr/bin/mailq").recipients == ("-v",)  # passed on to mailq as is
    assert parse([], "/usr/bin/newaliases").mode == "newaliases"
    assert parse([], "/usr/sbin/sendmail").mode == "send"


@pytest.mark.parametrize(
    "argv", [["-v", "-G", "-U", "-L", "tag", "-h", "5", "-n", "-odi", "-X", "/dev/null", "x"]]
)
def test_accepted_and_ignored(argv: list[str]) -> None:
    assert parse(argv).recipients == ("x",)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-k"], "-k"),
        (["-tZ"], "-Z"),
        (["-f"], "-f requires"),
        (["-bd"], "-bd"),
        (["-R", "all"], "-R"),
        (["-N", "sometimes"], "-N"),
        (["-V", "a b"], "-V"),
    ],
)
def test_usage_errors_name_the_flag(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(argv)
    assert words in info.value.message and "\n" not in info.value.message
    assert info.value.exit_code == 64


def test_options_are_read_only() -> None:
    o = parse(["-t"])
    with pytest.raises(AttributeError):
        o.extract = False  # type: ignore[misc]
    assert isinstance(o, Options) and "extract=True" in repr(o)


@given(st.lists(st.text(max_size=12), max_size=8), st.sampled_from(["sendmail", "mailq", "newaliases"]))
def test_arbitrary_argv_raises_only_usage_or_message_error(argv: list[str], prog: str) -> None:
    try:
        opts = parse(argv, prog)
    except (UsageError, MessageError) as exc:  # 64, or 65 for an address with CR/LF/NUL
        assert "\n" not in exc.message
        return
    assert all(isinstance(r, str) for r in opts.recipients)
