"""`relay-agent demo`: the whole run as a newcomer sees it, plus its own parts (stand-in relay,
config, DKIM verdicts) checked on their own so a failure says which part broke."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from agent import config as config_mod
from agent.demo import tour
from agent.demo.smarthost import DemoRelay
from agent.demo.tour import ALIAS_ROOT, PASSWORD_ENV, USER, config_toml, dkim_verdicts, status_lines
from agent.dkim import key_files

RELAY_AGENT = str(Path(sys.executable).parent / "relay-agent")
PASSWORD = "Demo-Pw-7f3a9c1e-never-print-me"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[DemoRelay]:
    with DemoRelay(str(tmp_path), USER, PASSWORD) as r:
        yield r


@pytest.fixture(scope="module")
def signing_key() -> key_files.PrivateKey:
    return key_files.generate("rsa", 2048)


# ----- the whole demo, as a subprocess ----------------------------------------------------------


def test_demo_runs_end_to_end_and_never_prints_the_password() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_AGENT_CONFIG", "RELAY_AGENT_PASSWORD")}
    env[PASSWORD_ENV] = PASSWORD
    proc = subprocess.run([RELAY_AGENT, "demo"], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert PASSWORD not in out
    # Both messages arrived at the stand-in, over TLS with AUTH, and verified against the new key.
    assert len(re.findall(r"delivered \d+\.\d\d s after ", out)) == 2, out
    assert out.count("TLS + AUTH demo@demo.example; DKIM: pass (d=demo.example s=demo, rsa-sha256)") == 2, out
    assert f"-> <{ALIAS_ROOT}>" in out and "-> <someone@example.net>" in out
    assert re.search(r"sendmail exit 0 in \d+ ms", out)
    assert "daemon stopped by SIGTERM: exit 0" in out
    sent = (
        r"\w+: to=<[^>]+>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, account=default, "
        r"delay=[\d.]+, dsn=2\.0\.0, status=sent "
    )
    assert len(re.findall(sent, out)) == 2, out
    assert "demo passed" in out and "FAILED" not in out
    assert len(proc.stdout.splitlines()) <= 35, "the demo's output should stay short"


def test_demo_reports_failure_when_the_tools_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every console script replaced by `false`: the demo must say so and exit 1, not claim success.
    monkeypatch.setattr(tour, "tool", lambda name, fallback: ["false"])
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert tour.main() == 1
    out = capsys.readouterr().out
    assert "FAILED: sendmail (daemon down) exited 1" in out
    assert "FAILED: daemon exited 1" in out
    assert "demo FAILED" in out and "demo passed" not in out and PASSWORD not in out


# ----- the relay stand-in -------------------------------------------------------------------------


def test_relay_requires_starttls_before_auth_and_verifies_with_its_ca(relay: DemoRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.mail("x@example.net")[0] == 530
        smtp.rset()
        smtp.starttls(context=ssl.create_default_context(cafile=relay.ca_file))
        smtp.ehlo()
        assert smtp.has_extn("auth")
        smtp.login(USER, PASSWORD)
        smtp.sendmail("a@demo.example", ["b@example.net"], b"Subject: t\r\n\r\nhello\r\n")
    [msg] = relay.wait_for(1, timeout=5)
    assert (msg.mail_from, msg.rcpt_tos, msg.tls, msg.auth_user) == (
        "a@demo.example",
        ("b@example.net",),
        True,
        USER,
    )
    assert msg.data.endswith(b"hello\r\n")


def test_relay_certificate_names_localhost_too(relay: DemoRelay) -> None:
    with smtplib.SMTP("localhost", relay.port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=relay.ca_file))
        assert smtp.ehlo()[0] == 250


def test_relay_refuses_a_wrong_password_and_an_untrusted_client(relay: DemoRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=relay.ca_file))
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(USER, "wrong")
    assert relay.auth_failures >= 1
    # The CA is throwaway: a client using only the system trust store must refuse the cert.
    with (
        smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        smtp.starttls(context=ssl.create_default_context())
    assert relay.messages == []


# ----- pure parts ----------------------------------------------------------------------------------


def test_config_is_valid_and_keeps_everything_in_the_temp_dir(tmp_path: Path) -> None:
    text = config_toml(str(tmp_path), 2525, str(tmp_path / "ca.pem"), str(tmp_path / "k.pem"))
    cfg = config_mod.from_dict(tomllib.loads(text), path=str(tmp_path / "config.toml"))
    assert (cfg.relay.host, cfg.relay.port, cfg.relay.username) == ("127.0.0.1", 2525, USER)
    assert cfg.aliases["root"] == ALIAS_ROOT and cfg.sender.default_from == USER
    assert [(k.domain, k.selector) for k in cfg.dkim] == [("demo.example", "demo")]
    for path in (cfg.queue.path, cfg.queue.maildrop, cfg.listen.socket, cfg.relay.ca_file):
        assert path.startswith(str(tmp_path))
    assert "password" not in text


def _sign(key: key_files.PrivateKey, message: bytes) -> bytes:
    sig = dkim.sign(
        message, b"demo", b"demo.example", key_files.private_pem(key), include_headers=[b"from", b"subject"]
    )
    return bytes(sig) + message


MESSAGE = b"From: app@demo.example\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def test_dkim_verdict_passes_only_for_the_published_key(signing_key: key_files.PrivateKey) -> None:
    signed = _sign(signing_key, MESSAGE)
    records = {"demo._domainkey.demo.example": key_files.txt_value(signing_key)}
    assert dkim_verdicts(signed, records) == [(True, "pass (d=demo.example s=demo, rsa-sha256)")]
    other = {"demo._domainkey.demo.example": key_files.txt_value(key_files.generate("rsa", 2048))}
    assert dkim_verdicts(signed, other) == [(False, "fail (d=demo.example s=demo, rsa-sha256)")]
    assert dkim_verdicts(signed, {})[0][0] is False


def test_dkim_verdict_fails_a_tampered_body_and_an_unsigned_message(
    signing_key: key_files.PrivateKey,
) -> None:
    signed = _sign(signing_key, MESSAGE)
    records = {"demo._domainkey.demo.example": key_files.txt_value(signing_key)}
    assert dkim_verdicts(signed.replace(b"body", b"b0dy"), records)[0][0] is False
    assert dkim_verdicts(MESSAGE, records) == []


def test_status_lines_pick_the_sent_events() -> None:
    log = "relay-agent[1]: started\nrelay-agent[1]: A1: to=<x@y>, dsn=2.0.0, status=sent (250 ok)\n"
    assert status_lines(log) == ["relay-agent[1]: A1: to=<x@y>, dsn=2.0.0, status=sent (250 ok)"]
