"""The real callers' exact invocations through the running daemon to the relay stand-in,
each message DKIM-verified by Perl Mail::DKIM (keys served by dnsmasq) and dkimpy.

tests/test_sendmail_callers.py checks the same invocations byte for byte with the daemon
down (maildrop); here the whole path runs: sendmail → socket → cleanup → queue → relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config
from tests.support.agent_env import AgentEnv
from tests.support.dnsmasq import DnsServer
from tests.support.relay_standin import RelayStandin
from tests.support.verify import dkim_dns_records, verify_dkimpy, verify_perl

CRON = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@web1> backup\n\nbackup done\n.\nmore\n"
PHP = b"To: a@example.net\r\nSubject: php\r\nFrom: shop@example.com\r\n\r\nOrder 1\r\n"
PLAIN = b"From: dev@example.com\nTo: a@example.net\nSubject: s\n\nline one\n.\nline after dot\n"

# name, argv, stdin, envelope sender, envelope recipients, a body fragment that must arrive
CASES = [
    (
        "debian-cron",
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        CRON,
        "cron@example.com",
        ["ops@example.com"],
        b"\r\n.\r\nmore\r\n",
    ),
    (
        "cronie",
        ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],
        CRON,
        "cron@example.com",
        ["ops@example.com"],
        b"backup done",
    ),
    ("php-mail", ["-t", "-i"], PHP, "cron@example.com", ["a@example.net"], b"Order 1"),
    (
        "php-mail-f",
        ["-t", "-i", "-f", "shop@example.com"],
        PHP,
        "shop@example.com",
        ["a@example.net"],
        b"Order 1",
    ),
    (
        "phpmailer",
        ["-oi", "-fshop@example.com", "-t"],
        PHP,
        "shop@example.com",
        ["a@example.net"],
        b"Order 1",
    ),
    (
        "git-send-email",
        ["-i", "-f", "dev@example.com", "a@example.net", "b@example.net", "c@example.net"],
        PLAIN,
        "dev@example.com",
        ["a@example.net", "b@example.net", "c@example.net"],
        b"line after dot",
    ),
    (
        "mutt",
        [
            "-oem",
            "-oi",
            "-B8BITMIME",
            "-f",
            "dev@example.com",
            "-N",
            "success,failure",
            "-R",
            "hdrs",
            "--",
            "a@example.net",
        ],
        PLAIN,
        "dev@example.com",
        ["a@example.net"],
        b"line after dot",
    ),
    (
        "rails",
        ["-i", "-f", "dev@example.com", "--", "a@example.net"],
        PLAIN,
        "dev@example.com",
        ["a@example.net"],
        b"line after dot",
    ),
    ("logwatch", ["-t"], PLAIN, "cron@example.com", ["a@example.net"], b"line one"),
    ("unattended-upgrades", ["-oi", "-t"], PLAIN, "cron@example.com", ["a@example.net"], b"line after dot"),
    (
        "mailutils",
        ["-oi", "-f", "dev@example.com", "a@example.net"],
        PLAIN,
        "dev@example.com",
        ["a@example.net"],
        b"line after dot",
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentEnv, RelayStandin, DnsServer]]:
    tmp: Path = tmp_path_factory.mktemp("callers")
    with RelayStandin() as relay:
        env = AgentEnv(tmp, relay)
        with DnsServer(dkim_dns_records(config.load(str(env.config)))) as dns:
            env.start()
            try:
                yield env, relay, dns
            finally:
                env.stop()


@pytest.mark.parametrize(
    ("name", "argv", "stdin", "sender", "rcpts", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_caller_through_the_daemon(
    site: tuple[AgentEnv, RelayStandin, DnsServer],
    name: str,
    argv: list[str],
    stdin: bytes,
    sender: str,
    rcpts: list[str],
    fragment: bytes,
) -> None:
    env, relay, dns = site
    relay.clear()
    r = env.sendmail(argv, stdin)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = relay.wait_for(1)[0]
    assert got.mail_from == sender
    assert sorted(got.rcpt_tos) == sorted(rcpts)
    assert fragment in got.data
    if name == "logwatch":
        assert b"line after dot" not in got.data  # no -i: the lone dot ended the message
    if name == "mutt":
        assert any("RET=HDRS" in o.upper() for o in got.mail_options)
        assert any("NOTIFY=SUCCESS,FAILURE" in o.upper() for opts in got.rcpt_options for o in opts)
    ok, detail = verify_perl(got.data, dns.port)
    assert ok, detail
    assert verify_dkimpy(got.data, dkim_dns_records(config.load(str(env.config))))


def test_bs_session_through_the_daemon(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, relay, dns = site
    relay.clear()
    session = (
        b"EHLO app\r\nMAIL FROM:<shop@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"
        b"From: shop@example.com\r\nTo: a@example.net\r\nSubject: symfony\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    )
    r = env.sendmail(["-bs", "-odb", "-oem"], session)
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split(b"\r\n")
    after_data = replies[replies.index(next(x for x in replies if x.startswith(b"354"))) + 1]
    assert after_data.startswith(b"250 "), r.stdout  # the daemon queued it, then -bs said 250
    assert replies[-2].startswith(b"221"), r.stdout
    got = relay.wait_for(1)[0]
    assert (got.mail_from, list(got.rcpt_tos)) == ("shop@example.com", ["a@example.net"])
    ok, detail = verify_perl(got.data, dns.port)
    assert ok, detail
