"""Every file in examples/ run by its real client; each message must reach the relay stand-in DKIM-valid.

One daemon (Unix socket + loopback SMTP listener), one relay stand-in and one dnsmasq serve the
whole module; each test starts from an empty stand-in. Signatures are checked by both Perl's
Mail::DKIM (key served over real DNS) and dkimpy.
"""

from __future__ import annotations

import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from agent.dkim import key_files
from tests.support.agent_env import RELAY_AGENT, SENDMAIL, AgentEnv
from tests.support.dnsmasq import DnsServer
from tests.support.relay_standin import Received, RelayStandin
from tests.support.verify import verify_dkimpy, verify_perl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHON = sys.executable


@dataclass
class Site:
    env: AgentEnv
    relay: RelayStandin
    dns: DnsServer
    records: dict[str, str]
    smtp_port: int
    tmp: Path


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("examples")
    agent_dir = tmp_path_factory.mktemp("agent")
    port = _free_tcp_port()
    with RelayStandin() as relay:
        env = AgentEnv(agent_dir, relay, extra={"listen": {"smtp": f"127.0.0.1:{port}"}})
        records = env.dns_records()
        served = {name: [tuple(key_files.split_txt(value))] for name, value in records.items()}
        with DnsServer(served) as dns:
            env.start()
            try:
                yield Site(env, relay, dns, records, port, tmp)
            finally:
                assert env.stop() == 0


@pytest.fixture
def s(site: Site) -> Site:
    site.relay.clear()
    return site


def arrived(site: Site, n: int = 1) -> list[Received]:
    """The n messages the stand-in got, each DKIM-valid for example.com by both verifiers."""
    site.relay.wait_for(n, timeout=15)
    time.sleep(0.2)  # a duplicate or a late extra message would show up by now
    got = site.relay.messages
    assert len(got) == n, [m.rcpt_tos for m in got]
    for m in got:
        head = m.data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"DKIM-Signature:") and b"d=example.com;" in head, head
        ok, detail = verify_perl(m.data, site.dns.port)
        assert ok, detail
        assert verify_dkimpy(m.data, site.records)
    return got


def parsed(m: Received) -> EmailMessage:
    msg = message_from_bytes(m.data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def run(cmd: list[str], site: Site, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(
        cmd, input=stdin, env={**site.env.env, **env}, capture_output=True, timeout=60, cwd=site.tmp
    )
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r


def attachment(msg: EmailMessage) -> tuple[str | None, bytes]:
    parts = list(msg.iter_attachments())
    assert len(parts) == 1, [p.get_content_type() for p in parts]
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return parts[0].get_filename(), payload


# ----- PHP -----


def test_php_mail_with_envelope_sender(s: Site) -> None:
    script = EXAMPLES / "php" / "send.php"
    r = run(
        ["php", "-n", "-d", f"sendmail_path={SENDMAIL} -t -i", str(script), "php-user@example.net"],
        s,
        MAIL_FROM="web@example.com",
        MAIL_SUBJECT="php test",
    )
    assert b"queued for php-user@example.net" in r.stderr
    (m,) = arrived(s)
    assert m.mail_from == "web@example.com"  # mail()'s 5th argument, -f
    assert list(m.rcpt_tos) == ["php-user@example.net"]
    msg = parsed(m)
    assert msg["Subject"] == "php test" and "web@example.com" in msg["From"]
    assert "Smörgåsbord" in msg.get_content()


def test_php_ini_snippet_sets_sendmail_path() -> None:
    snippet = (EXAMPLES / "php" / "php.ini-snippet").read_text()
    # php itself must read the snippet as an ini file and see the value we document
    out = subprocess.run(
        [
            "php",
            "-n",
            "-c",
            str(EXAMPLES / "php" / "php.ini-snippet"),
            "-r",
            "echo ini_get('sendmail_path');",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == "/usr/sbin/sendmail -t -i"
    assert 'sendmail_path = "/usr/sbin/sendmail -t -i"' in snippet


# ----- git send-email -----


def git(site: Site, repo: Path, home: Path, *args: str) -> str:
    # HOME: the example snippet is the user's whole git config; nothing from the host's.
    env = {**site.env.env, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8"}
    r = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_git_send_email(s: Site) -> None:
    home = s.tmp / "git-home"
    repo = home / "repo"
    repo.mkdir(parents=True)
    shutil.copyfile(EXAMPLES / "git" / "gitconfig-snippet", home / ".gitconfig")
    git(s, repo, home, "init", "-q")
    (repo / "hello.txt").write_text("hello\n")
    git(s, repo, home, "add", "hello.txt")
    git(s, repo, home, "commit", "-qm", "Add hello.txt")
    (repo / "hello.txt").write_text("hello\nworld\n")
    git(s, repo, home, "commit", "-qam", "Say world too")
    patch = git(s, repo, home, "format-patch", "-1", "-o", str(home / "out")).strip()
    git(
        s,
        repo,
        home,
        "send-email",
        f"--smtp-server={SENDMAIL}",  # absolute path: git runs it as sendmail
        "--confirm=never",
        "--quiet",
        "--to=maintainer@example.net",
        patch,
    )
    (m,) = arrived(s)
    assert list(m.rcpt_tos) == ["maintainer@example.net"]  # suppresscc = self: no copy to the author
    msg = parsed(m)
    assert msg["Subject"] == "[PATCH] Say world too"
    assert msg["From"] == "Dev One <dev@example.com>"
    assert "+world" in msg.get_content()


# ----- mailutils mail -----


def test_mailutils_mail_with_attachment(s: Site) -> None:
    report = s.tmp / "report.csv"
    report.write_bytes(b"host,disk\nweb1,81%\n" + bytes(range(256)))
    run(
        [
            "mail",
            # mailutils' mailer URL: run this program instead of /usr/sbin/sendmail
            "-E",
            f"set sendmail=sendmail://{SENDMAIL}",
            "-s",
            "nightly report",
            "-r",
            "reports@example.com",
            "-A",
            str(report),
            "boss@example.net",
        ],
        s,
        stdin=b"Report attached.\n",
        HOME=str(s.tmp),  # no ~/.mailrc from the host
    )
    (m,) = arrived(s)
    assert m.mail_from == "reports@example.com" and list(m.rcpt_tos) == ["boss@example.net"]
    msg = parsed(m)
    assert msg["Subject"] == "nightly report"
    assert attachment(msg) == ("report.csv", report.read_bytes())


# ----- shell -----


def test_shell_report_with_attachment(s: Site) -> None:
    report = s.tmp / "disk report.bin"
    data = os.urandom(5000)  # binary: only an exact base64 round trip passes
    report.write_bytes(data)
    script = EXAMPLES / "shell" / "report-with-attachment.sh"
    run(
        ["sh", str(script), str(report), "ops@example.net", "Weekly disk report"],
        s,
        SENDMAIL=SENDMAIL,
        REPORT_FROM="reports@example.com",
    )
    (m,) = arrived(s)
    assert list(m.rcpt_tos) == ["ops@example.net"]
    msg = parsed(m)
    assert msg["Subject"] == "Weekly disk report" and msg["From"] == "reports@example.com"
    assert attachment(msg) == ("disk report.bin", data)
    text = next(iter(msg.iter_parts()))
    assert "Report disk report.bin from" in text.get_content()


def test_shell_report_usage_error(s: Site) -> None:
    script = EXAMPLES / "shell" / "report-with-attachment.sh"
    r = subprocess.run(["sh", str(script), str(s.tmp / "missing")], capture_output=True, timeout=30)
    assert r.returncode == 64 and b"usage:" in r.stderr


# ----- cron -----


def crontab_parts() -> tuple[str, str]:
    """(MAILTO, the job's command) from the example crontab."""
    mailto, command = "", ""
    for line in (EXAMPLES / "cron" / "crontab").read_text().splitlines():
        if line.startswith("MAILTO="):
            mailto = line.split("=", 1)[1].strip()
        elif line and not line.startswith("#"):
            command = line.split(None, 5)[5]
    assert mailto and command
    return mailto, command


def test_cron_mail_goes_to_root_alias(s: Site) -> None:
    mailto, command = crontab_parts()
    assert mailto == "root"
    output = subprocess.run(["sh", "-c", command], capture_output=True, timeout=30, check=True).stdout
    assert b"disk usage on" in output
    # What Debian's cron (3.0pl1) writes to sendmail for a job with output
    cron_msg = (
        b"From: root (Cron Daemon)\nTo: " + mailto.encode() + b"\n"
        b"Subject: Cron <root@" + socket.gethostname().encode() + b"> " + command.encode() + b"\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n"
        b"X-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <HOME=/root>\nX-Cron-Env: <PATH=/usr/bin:/bin>\n"
        b"X-Cron-Env: <LOGNAME=root>\n\n" + output
    )
    run([SENDMAIL, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", mailto], s, stdin=cron_msg)
    (m,) = arrived(s)
    assert list(m.rcpt_tos) == ["ops@example.com"]  # [aliases] root
    assert m.mail_from == "cron@example.com"  # [sender] default_from
    msg = parsed(m)
    assert "cron@example.com" in msg["From"] and "root@" not in msg["From"]
    assert msg["Subject"].startswith("Cron <root@")
    assert msg.get_content().replace("\r\n", "\n").encode() == output


# ----- Python -----


def test_smtplib_unix_socket(s: Site) -> None:
    script = EXAMPLES / "python" / "smtplib_unix_socket.py"
    r = run([PYTHON, str(script), "sock-user@example.net", str(s.env.socket)], s)
    assert b"queued for sock-user@example.net" in r.stdout
    (m,) = arrived(s)
    assert m.mail_from == "app@example.com" and list(m.rcpt_tos) == ["sock-user@example.net"]
    assert parsed(m)["Subject"] == "Hello over the Unix socket"


def test_smtplib_unix_socket_reports_refusal(s: Site, tmp_path: Path) -> None:
    # A From: domain with no DKIM key: the agent's 550 must surface as an error exit
    script = (EXAMPLES / "python" / "smtplib_unix_socket.py").read_text()
    bad = tmp_path / "bad.py"
    bad.write_text(script.replace("app@example.com", "app@unsigned.example.org"))
    r = subprocess.run(
        [PYTHON, str(bad), "x@example.net", str(s.env.socket)], capture_output=True, timeout=30
    )
    assert r.returncode != 0 and b"550" in r.stderr
    assert s.relay.messages == []


def test_smtplib_loopback(s: Site) -> None:
    script = EXAMPLES / "python" / "smtplib_loopback.py"
    r = run([PYTHON, str(script), "tcp-user@example.net", f"127.0.0.1:{s.smtp_port}"], s)
    assert b"queued for tcp-user@example.net" in r.stdout
    (m,) = arrived(s)
    assert m.mail_from == "app@example.com" and list(m.rcpt_tos) == ["tcp-user@example.net"]
    assert parsed(m)["Subject"] == "Hello over loopback SMTP"


def django_settings(site: Site) -> Any:
    """Configure Django once for this process from the example settings file."""
    from django.conf import settings

    if not settings.configured:
        example = runpy.run_path(str(EXAMPLES / "python" / "django_settings.py"))
        values = {k: v for k, v in example.items() if k.isupper()}
        assert values["EMAIL_HOST"] == "127.0.0.1" and values["EMAIL_PORT"] == 2525
        values["EMAIL_PORT"] = site.smtp_port  # the test's free port instead of 2525
        settings.configure(**values, SENDMAIL_COMMAND=SENDMAIL)
    return settings


def test_django_send_mail_over_loopback(s: Site) -> None:
    from django.core.mail import send_mail

    django_settings(s)
    sent = send_mail("django test", "Hello from Django.", None, ["dj-user@example.net"])
    assert sent == 1
    (m,) = arrived(s)
    assert m.mail_from == "noreply@example.com"  # DEFAULT_FROM_EMAIL
    assert list(m.rcpt_tos) == ["dj-user@example.net"]
    msg = parsed(m)
    assert msg["Subject"] == "django test" and msg["From"] == "Web App <noreply@example.com>"


def test_django_sendmail_backend_with_bcc(s: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.mail import EmailMessage as DjangoMessage
    from django.core.mail import get_connection

    django_settings(s)
    monkeypatch.setenv("RELAY_AGENT_CONFIG", str(s.env.config))  # read by the sendmail child
    monkeypatch.syspath_prepend(str(EXAMPLES / "python"))
    connection = get_connection("django_sendmail_backend.SendmailBackend")
    message = DjangoMessage(
        "via sendmail", "Hello.", "App <app@example.com>", ["to@example.net"], bcc=["hidden@example.net"]
    )
    assert connection.send_messages([message]) == 1
    (m,) = arrived(s)
    assert m.mail_from == "app@example.com"
    assert sorted(m.rcpt_tos) == ["hidden@example.net", "to@example.net"]
    assert b"hidden@example.net" not in m.data
    assert parsed(m)["Subject"] == "via sendmail"


# ----- the example config -----


def test_example_config_is_valid(tmp_path: Path) -> None:
    # A copy: the CLI leaves a pre-digested cache beside the TOML it reads. `config check`
    # opens every key file the config names, as the daemon would: the copy's keys are made
    # here, where the example's /etc/relay-agent/dkim/ paths would be on a real host.
    env = {k: v for k, v in os.environ.items() if k != "RELAY_AGENT_CONFIG"}
    text = (EXAMPLES / "config.toml").read_text()
    for selector in ("relay2025", "relay2026"):
        keygen = [RELAY_AGENT, "dkim", "keygen", "--domain", "example.com", "--selector", selector]
        subprocess.run([*keygen, "--out", str(tmp_path)], check=True, capture_output=True, env=env)
        text = text.replace(
            f"/etc/relay-agent/dkim/example.com.{selector}.pem", str(tmp_path / f"example.com.{selector}.pem")
        )
    config = tmp_path / "config.toml"
    config.write_text(text)
    r = subprocess.run(
        [RELAY_AGENT, "--config", str(config), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert '"host": "smtp.elastx.email"' in r.stdout
    missing = subprocess.run(
        [RELAY_AGENT, "--config", str(EXAMPLES / "config.toml"), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # without its key files the example is refused, naming the first one (78)
    assert missing.returncode == 78 and "/etc/relay-agent/dkim/example.com.relay2025.pem" in missing.stderr
