"""Submitter quotas, the pure part: sliding windows, who a submitter is, "*", the log line once per
user and window, the drop socket's verdict handed to pickup. The clock is passed in."""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd

import pytest

from agent.config import Config, LimitsConfig
from agent.config.quotas import parse_quotas
from agent.intake import quotas
from agent.intake.quotas import QuotaError, Quotas

NOBODY = pwd.getpwnam("nobody").pw_uid
T0 = 1_700_000_000.0


def config(over_quota: str = "hold", **lines: str) -> Config:
    raw = {k.replace("ANY", "*"): v for k, v in lines.items()}
    return dataclasses.replace(Config(), quotas=parse_quotas(raw), limits=LimitsConfig(over_quota=over_quota))


def test_a_window_lets_count_through_then_slides() -> None:
    book, cfg = Quotas(), config(nobody="5/min")
    assert [book.admit(cfg, NOBODY, T0 + i) for i in range(5)] == [None] * 5
    over = book.admit(cfg, NOBODY, T0 + 10)
    assert over is not None and (over.user, str(over.quota), over.held_for) == (
        "nobody",
        "5/min",
        "quota nobody",
    )
    assert book.admit(cfg, NOBODY, T0 + 59) is not None  # the first five are still inside the minute
    assert book.admit(cfg, NOBODY, T0 + 61) is None  # the first two slid out: room again
    assert book.admit(cfg, NOBODY, T0 + 61.5) is None
    assert book.admit(cfg, NOBODY, T0 + 61.5) is not None  # 2, 3, 4, 61 and 61.5 are inside
    assert [book.admit(cfg, NOBODY, T0 + 66) is None for _ in range(4)] == [True, True, True, False]


def test_over_quota_messages_are_not_counted() -> None:
    """A flood held or refused does not push the window out: once the minute has passed, the
    submitter's next five go through however many were turned away meanwhile."""
    book, cfg = Quotas(), config(nobody="2/min")
    book.admit(cfg, NOBODY, T0)
    book.admit(cfg, NOBODY, T0)
    assert all(book.admit(cfg, NOBODY, T0 + s) is not None for s in range(1, 59))
    assert book.admit(cfg, NOBODY, T0 + 61) is None


def test_users_have_their_own_windows_and_star_is_the_default() -> None:
    book = Quotas()
    cfg = config(nobody="1/h", ANY="2/h")
    assert book.admit(cfg, NOBODY, T0) is None and book.admit(cfg, NOBODY, T0) is not None
    assert [book.admit(cfg, 0, T0) is None for _ in range(3)] == [True, True, False]  # root: "*"
    assert book.admit(cfg, -1, T0) is None  # the TCP listener is "smtp": its own window under "*"
    assert book.admit(config(), NOBODY, T0) is None  # no [quotas]: nobody is counted
    assert quotas.user_name(-1) == "smtp" and quotas.user_name(0) == "root"
    assert quotas.user_name(4_000_000) == "4000000"  # no passwd entry: by number


def test_smtp_line_is_the_loopback_listener() -> None:
    book, cfg = Quotas(), config(smtp="1/s")
    assert book.admit(cfg, -1, T0) is None and book.admit(cfg, -1, T0 + 0.5) is not None
    assert book.admit(cfg, NOBODY, T0) is None


def test_the_log_says_it_once_per_user_and_window(caplog: pytest.LogCaptureFixture) -> None:
    book, cfg = Quotas(), config("refuse", nobody="1/min")
    with caplog.at_level(logging.WARNING, logger="relay-agent"):
        book.admit(cfg, NOBODY, T0)
        for s in range(1, 30):
            book.admit(cfg, NOBODY, T0 + s)
        book.admit(cfg, 0, T0)  # root has no quota here: no line
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "quota: user nobody is over its quota of 1/min: its mail is refused until the window has room"
            " (what comes through the maildrop is held)"
        ]
        book.admit(cfg, NOBODY, T0 + 61)  # a new window: room again, nothing to say
        book.admit(cfg, NOBODY, T0 + 62)  # over again in the new window: said again
        assert len(caplog.records) == 2


def test_refusal_is_a_452_naming_user_and_quota() -> None:
    book, cfg = Quotas(), config("refuse", nobody="1/min")
    book.admit(cfg, NOBODY, T0)
    over = book.admit(cfg, NOBODY, T0)
    assert over is not None
    err = over.refusal()
    assert isinstance(err, QuotaError) and err.exit_code == 75
    assert err.smtp_reply() == "452 4.7.1 user nobody is over its quota of 1/min messages; try again later"
    assert book.would_refuse(cfg, NOBODY, T0) == over  # what SMTP says at MAIL FROM
    assert book.would_refuse(config("hold", nobody="1/min"), NOBODY, T0) is None  # held, not refused


def test_pickup_takes_the_drop_sockets_verdict_once() -> None:
    book = Quotas()
    over = quotas.Over("nobody", parse_quotas({"nobody": "1/min"})["nobody"])
    book.dropped("f1", over)
    book.dropped("f2", None)
    assert book.taken("f1") == (True, over) and book.taken("f1") == (False, None)
    assert book.taken("f2") == (True, None)
    book.dropped("f3", None)
    book.forget("f3")
    assert book.taken("f3") == (False, None)


def test_shared_is_one_per_queue(tmp_path: os.PathLike[str]) -> None:
    a = quotas.shared(os.path.join(str(tmp_path), "q1"))
    assert quotas.shared(os.path.join(str(tmp_path), "q1")) is a
    assert quotas.shared(os.path.join(str(tmp_path), "q2")) is not a
