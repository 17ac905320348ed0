"""Capture mode (staging): the real daemon with a reachable relay stand-in configured never connects to
it; each message lands in the Maildir as it would have followed DATA, DKIM-valid by dkimpy and by Perl
Mail::DKIM, read back with Python's mailbox.Maildir; the log line names the file."""

from __future__ import annotations

import mailbox
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config
from tests.support.agent_env import AgentEnv, wait_until
from tests.support.dnsmasq import DnsServer
from tests.support.relay_standin import RelayStandin
from tests.support.verify import dkim_dns_records, verify_dkimpy, verify_perl

pytestmark = pytest.mark.timeout(120)

LOG_LINE = re.compile(
    r"(?P<qid>[0-9A-F]{16}): to=<(?P<rcpt>[^>]*)>, relay=capture, (?:account=(?P<account>[a-z0-9-]+), )?"
    r"delay=\d+\.\d\d, dsn=2\.0\.0, status=sent \(captured: (?P<name>[^ )]+)\)$",
    re.M,
)
TWO = (
    b"From: App <app@example.com>\nTo: a@example.net, b@example.net\nSubject: two of them\n\n"
    b"first line\n.a line that starts with a dot\n..two dots\nlast line\n"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentEnv, RelayStandin, DnsServer]]:
    tmp: Path = tmp_path_factory.mktemp("capture")
    with RelayStandin() as relay:  # reachable, with the right password: still never used
        capture = {"mode": "capture", "capture_dir": str(tmp / "captured")}
        # shop.example's mail goes with the account "shop" (unsigned: Elastx's own DKIM would sign it)
        env = AgentEnv(tmp, relay, extra={"relay": capture, "policy": {"unsigned": "send"}})
        shop = '[[account]]\nname = "shop"\nusername = "mail@shop.example"\ndomains = ["shop.example"]\n'
        env.config.write_text(env.config.read_text() + shop)
        with DnsServer(dkim_dns_records(config.load(str(env.config)))) as dns:
            env.start()
            try:
                yield env, relay, dns
            finally:
                assert env.stop() == 0


def maildir(env: AgentEnv) -> Path:
    return env.dir / "captured"


def captured(env: AgentEnv) -> dict[str, bytes]:
    """File name in new/ -> its bytes."""
    new = maildir(env) / "new"
    return {p.name: p.read_bytes() for p in new.iterdir()} if new.is_dir() else {}


def wait_delivered(env: AgentEnv, count: int) -> dict[str, bytes]:
    env.wait_queue_empty()
    files = captured(env)
    assert len(files) == count, (sorted(files), env.log())
    return files


def test_two_recipients_one_file_dkim_valid_and_no_connection(
    site: tuple[AgentEnv, RelayStandin, DnsServer],
) -> None:
    env, relay, dns = site
    before = set(captured(env))
    r = env.sendmail(["-t", "-i", "-f", "app@example.com"], TWO)
    assert r.returncode == 0, r.stderr
    files = wait_delivered(env, len(before) + 1)
    [name] = set(files) - before
    raw = files[name]
    head = b"Return-Path: <app@example.com>\r\nX-Relay-Agent-Account: default\r\n"
    head += b"X-Original-To: <a@example.net>\r\nX-Original-To: <b@example.net>\r\n"
    assert raw.startswith(head + b"DKIM-Signature: "), raw[:300]
    # what followed DATA: not dot-stuffed, CRLF, as the relay would have received it
    assert b"\r\n.a line that starts with a dot\r\n..two dots\r\nlast line\r\n" in raw
    ok, detail = verify_perl(raw, dns.port)
    assert ok, detail
    assert verify_dkimpy(raw, dkim_dns_records(config.load(str(env.config))))

    box = mailbox.Maildir(str(maildir(env)), create=False)
    msg = next(m for key, m in box.items() if key == name.split(":")[0])
    assert msg["Return-Path"] == "<app@example.com>" and msg["X-Relay-Agent-Account"] == "default"
    assert msg.get_all("X-Original-To") == ["<a@example.net>", "<b@example.net>"]
    assert msg["Subject"] == "two of them"
    assert relay.connections == 0 and relay.messages == [] and relay.auth_attempts == 0


def test_log_line_names_each_file_and_modes(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, relay, _ = site
    before = set(captured(env))
    code, _ = env.smtp_data(
        b"From: app@example.com\r\nSubject: over SMTP\r\n\r\nhi\r\n", rcpt="c@example.net"
    )
    assert code == 250
    files = wait_delivered(env, len(before) + 1)
    [name] = set(files) - before
    lines = {m["name"]: m for m in LOG_LINE.finditer(env.log())}
    assert name in lines, env.log()
    assert lines[name]["rcpt"] == "c@example.net" and lines[name]["account"] in (None, "default")
    assert set(lines) == set(files)  # every captured file logged, every logged name captured
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(maildir(env) / sub).st_mode) == 0o700, sub
    assert not os.listdir(maildir(env) / "tmp")
    assert stat.S_IMODE(os.stat(maildir(env) / "new" / name).st_mode) == 0o600
    assert relay.connections == 0


def test_big_message_through_the_daemon(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, relay, _ = site
    before = set(captured(env))
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n"
    body = line * (3 * 1024 * 1024 // len(line))  # ~3 MB: read from its queue file in chunks
    r = env.sendmail(["-t", "-i"], b"From: app@example.com\nTo: big@example.net\nSubject: big\n\n" + body)
    assert r.returncode == 0, r.stderr
    files = wait_delivered(env, len(before) + 1)
    [name] = set(files) - before
    raw = files[name]
    assert raw.endswith(body.replace(b"\n", b"\r\n")) and len(raw) > 3_000_000
    assert verify_dkimpy(raw, dkim_dns_records(config.load(str(env.config))))
    assert relay.connections == 0


def test_unwritable_maildir_defers_then_delivers(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, relay, _ = site
    new = maildir(env) / "new"
    new.rename(maildir(env) / "new.aside")
    new.write_bytes(b"not a directory")
    try:
        code, _ = env.smtp_data(
            b"From: app@example.com\r\nSubject: later\r\n\r\nhi\r\n", rcpt="d@example.net"
        )
        assert code == 250
        listed: list[dict[str, object]] = []

        def deferred() -> bool:
            listed[:] = env.queue_json()
            return bool(listed) and listed[0]["state"] == "deferred"

        wait_until(deferred, timeout=15.0)
        assert f"cannot capture into {maildir(env)}" in str(listed[0]["last_error"]), listed
        assert re.search(r"to=<d@example\.net>, relay=capture, .*status=deferred", env.log())
    finally:
        new.unlink()
        (maildir(env) / "new.aside").rename(new)
    before = set(captured(env))
    assert env.cli("queue", "flush").returncode == 0
    files = wait_delivered(env, len(before) + 1)
    [name] = set(files) - before
    assert b"X-Original-To: <d@example.net>\r\n" in files[name] and relay.connections == 0


def test_the_account_chosen_for_the_message_is_named(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, relay, _ = site
    before = set(captured(env))
    message = b"From: news@eu.shop.example\nTo: e@example.net\nSubject: shop\n\nhi\n"
    r = env.sendmail(["-t", "-i", "-f", "news@eu.shop.example"], message)
    assert r.returncode == 0, r.stderr
    files = wait_delivered(env, len(before) + 1)
    [name] = set(files) - before
    assert files[name].startswith(
        b"Return-Path: <news@eu.shop.example>\r\nX-Relay-Agent-Account: shop\r\n"
        b"X-Original-To: <e@example.net>\r\n"
    )
    lines = {m["name"]: m for m in LOG_LINE.finditer(env.log())}
    assert lines[name]["account"] == "shop" and relay.connections == 0


def test_config_check_and_status_say_capture_first(site: tuple[AgentEnv, RelayStandin, DnsServer]) -> None:
    env, _, _ = site
    for args in (("config", "check"), ("status",)):
        r = env.cli(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == "mode: capture", (args, r.stdout)
    status = env.cli("status").stdout
    assert f"capture_dir: {maildir(env)}" in status and "daemon: running" in status
