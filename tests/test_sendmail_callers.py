"""sendmail as its real callers invoke it, daemon down: the message must land in the maildrop.

Each test runs both the pip console script and the stub `install` writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.queue import queue_file
from agent.submit import stub

VENV_BIN = Path(sys.executable).parent

CONFIG = """
[queue]
path = "{d}/queue"
maildrop = "{d}/maildrop"
min_free = 0
[listen]
socket = "{d}/submit.sock"
[limits]
max_message_size = 100000
[sender]
default_from = "noreply@example.com"
[aliases]
root = "ops@example.com"
www-data = "web@example.com"
[[dkim]]
domain = "example.com"
selector = "s1"
key_file = "{d}/k.pem"
[policy]
unsigned = "reject"
"""


@dataclass
class Env:
    dir: Path
    command: list[str]

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def maildrop(self) -> Path:
        return self.dir / "maildrop"

    def run(
        self, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        environ = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(self.config), **(env or {})}
        return subprocess.run(
            [*self.command, *args], input=stdin, capture_output=True, env=environ, timeout=30
        )

    def drops(self) -> list[tuple[queue_file.Envelope, bytes]]:
        if not self.maildrop.exists():
            return []
        names = sorted(p for p in self.maildrop.iterdir() if not p.name.startswith("."))
        return [queue_file.decode(p.read_bytes()) for p in names]

    def one_drop(self, *args: str, stdin: bytes = b"") -> tuple[queue_file.Envelope, bytes]:
        res = self.run(*args, stdin=stdin)
        assert res.returncode == 0, res.stderr
        assert res.stderr == b""
        drops = self.drops()
        assert len(drops) == 1
        return drops[0]


def write_stub(path: Path, python: str, site_dirs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stub.render("sendmail", python, site_dirs))
    path.chmod(0o755)
    return path


def make_env(directory: Path, kind: str) -> Env:
    (directory / "config.toml").write_text(CONFIG.format(d=directory))
    if kind == "console":
        command = [str(VENV_BIN / "sendmail")]
    else:
        command = [
            str(
                write_stub(directory / "bin" / "sendmail", str(VENV_BIN / "python"), stub.default_site_dirs())
            )
        ]
    return Env(directory, command)


@pytest.fixture(params=["console", "stub"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield make_env(tmp_path, request.param)


def header(message: bytes, name: bytes) -> bytes:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line[len(name) + 1 :].strip()
    return b""


def is_crlf(message: bytes) -> bool:
    return message.count(b"\n") == message.count(b"\r\n") and message.endswith(b"\r\n")


CRON_MSG = (
    b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@web1> /usr/bin/backup\nMIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=UTF-8\n\nbackup done\n.\nstill output\n"
)


def test_debian_cron(env: Env) -> None:
    env_, msg = env.one_drop("-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", stdin=CRON_MSG)
    assert env_.recipients == ("ops@example.com",)
    assert env_.sender == "noreply@example.com"
    assert header(msg, b"From") == b"Cron Daemon <noreply@example.com>"
    assert b"\r\n.\r\nstill output\r\n" in msg  # -i: the lone dot is content
    assert header(msg, b"Date") and header(msg, b"Message-ID")
    assert is_crlf(msg) and env_.uid == 0


def test_cronie(env: Env) -> None:
    env_, msg = env.one_drop("-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root", stdin=CRON_MSG)
    assert (env_.sender, env_.recipients) == ("noreply@example.com", ("ops@example.com",))
    assert header(msg, b"To") == b"root"  # headers are not alias-expanded, only the envelope


PHP_MSG = (
    b"To: user@example.org\r\nSubject: Order 42\r\nFrom: shop@example.com\r\n"
    b"X-PHP-Originating-Script: 33:index.php\r\n\r\nThanks!\r\n.\r\nbye\r\n"
)


@pytest.mark.parametrize("lf", [False, True], ids=["crlf", "lf"])
def test_php_mail(env: Env, lf: bool) -> None:
    data = PHP_MSG.replace(b"\r\n", b"\n") if lf else PHP_MSG
    env_, msg = env.one_drop("-t", "-i", stdin=data)
    assert (env_.sender, env_.recipients) == ("noreply@example.com", ("user@example.org",))
    assert msg.startswith(b"To: user@example.org\r\nSubject: Order 42\r\nFrom: shop@example.com\r\n")
    assert msg.endswith(b"\r\n\r\nThanks!\r\n.\r\nbye\r\n") and is_crlf(msg)


def test_php_mail_with_f(env: Env) -> None:
    env_, _ = env.one_drop("-t", "-i", "-f", "bounces@example.com", stdin=PHP_MSG)
    assert (env_.sender, env_.recipients) == ("bounces@example.com", ("user@example.org",))


def test_phpmailer_glued_f(env: Env) -> None:
    env_, msg = env.one_drop("-oi", "-fbounces@example.com", "-t", stdin=PHP_MSG)
    assert (env_.sender, env_.recipients) == ("bounces@example.com", ("user@example.org",))
    assert header(msg, b"Message-ID").endswith(b">")


GIT_MSG = (
    b"From: Dev One <dev@example.com>\nTo: list@example.org\nCc: Rev <rev@example.net>\n"
    b"Subject: [PATCH] fix\nDate: Mon, 1 Jan 2024 10:00:00 +0100\nMessage-ID: <20240101.1@example.com>\n"
    b"\n---\n.\n..dotted\n"
)


def test_git_send_email(env: Env) -> None:
    env_, msg = env.one_drop(
        "-i",
        "-f",
        "dev@example.com",
        "list@example.org",
        "rev@example.net",
        "hidden@example.org",
        stdin=GIT_MSG,
    )
    assert env_.recipients == ("list@example.org", "rev@example.net", "hidden@example.org")
    assert msg == GIT_MSG.replace(b"\n", b"\r\n")  # complete message: nothing added, nothing lost


def test_mutt(env: Env) -> None:
    body = "Grüße\n".encode()
    data = (
        b"From: A <a@example.com>\nTo: b@example.org\nSubject: hej\nContent-Transfer-Encoding: 8bit\n\n"
        + body
    )
    env_, msg = env.one_drop(
        "-oem",
        "-oi",
        "-B8BITMIME",
        "-f",
        "a@example.com",
        "-N",
        "success,failure",
        "-R",
        "hdrs",
        "--",
        "b@example.org",
        stdin=data,
    )
    assert env_.dsn == (("notify", "SUCCESS,FAILURE"), ("ret", "HDRS"))
    assert env_.recipients == ("b@example.org",) and msg.endswith(b"\r\n\r\n" + body.replace(b"\n", b"\r\n"))


def test_rails_mail_gem(env: Env) -> None:
    data = b"From: app@example.com\nTo: c@example.org\nSubject: welcome\n\nline 1\nline 2\n"
    env_, msg = env.one_drop("-i", "-f", "app@example.com", "--", "c@example.org", stdin=data)
    assert env_.sender == "app@example.com" and is_crlf(msg) and msg.endswith(b"\r\n\r\nline 1\r\nline 2\r\n")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_logwatch_lone_dot_ends_message(env: Env, eol: bytes) -> None:
    data = eol.join(
        [
            b"From: logwatch@example.com",
            b"To: root",
            b"Subject: Logwatch",
            b"",
            b"report",
            b"..x",
            b".",
            b"not part of the message",
            b"",
        ]
    )
    env_, msg = env.one_drop("-t", stdin=data)
    assert env_.recipients == ("ops@example.com",)
    assert msg.endswith(b"\r\n\r\nreport\r\n..x\r\n")


def test_unattended_upgrades(env: Env) -> None:
    data = b"From: root\nTo: root\nSubject: unattended-upgrades result\n\nAll upgrades installed\n"
    env_, msg = env.one_drop("-oi", "-t", stdin=data)
    assert (env_.sender, env_.recipients) == ("noreply@example.com", ("ops@example.com",))
    assert header(msg, b"From") == b"noreply@example.com"


def test_mailutils_mail(env: Env) -> None:
    data = b"To: x@example.org\nSubject: s\nFrom: a@example.com\n\nhi\n"
    env_, _ = env.one_drop("-oi", "-f", "a@example.com", "x@example.org", stdin=data)
    assert (env_.sender, env_.recipients) == ("a@example.com", ("x@example.org",))


BS_SESSION = (
    b"EHLO app.local\r\nMAIL FROM:<app@example.com> BODY=8BITMIME\r\nRCPT TO:<x@example.org>\r\n"
    b"RCPT TO:<root>\r\nDATA\r\nFrom: App <app@example.com>\r\nTo: x@example.org\r\nSubject: s\r\n\r\n"
    b"..leading dot\r\nbody\r\n.\r\nNOOP\r\nVRFY root\r\nRSET\r\nQUIT\r\n"
)


@pytest.mark.parametrize("flags", [["-bs"], ["-bs", "-odb", "-oem"]], ids=["bs", "bs-odb-oem"])
def test_symfony_drupal_bs(env: Env, flags: list[str]) -> None:
    res = env.run(*flags, stdin=BS_SESSION)
    assert res.returncode == 0, res.stderr
    codes = [line[:4] for line in res.stdout.decode().split("\r\n") if line]
    assert codes[0] == "220 " and "250 " in codes and codes[-1] == "221 "
    replies = [c for c in codes if c[3] == " "]
    assert replies == ["220 ", "250 ", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "252 ", "250 ", "221 "]
    [(env_, msg)] = env.drops()
    assert (env_.sender, env_.recipients) == ("app@example.com", ("x@example.org", "ops@example.com"))
    assert b"\r\n\r\n.leading dot\r\nbody\r\n" in msg and header(msg, b"Date")


def test_bs_refusals_are_smtp_replies(env: Env) -> None:
    session = (
        b"HELO x\r\nRCPT TO:<a@example.org>\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<nobody>\r\nDATA\r\n"
        b"RCPT TO:<b@example.org>\r\nDATA\r\nFrom: x@unsigned.example\r\n\r\nhi\r\n.\r\nBOGUS\r\nQUIT\r\n"
    )
    res = env.run("-bs", stdin=session)
    lines = [line for line in res.stdout.decode().split("\r\n") if line]
    assert res.returncode == 0
    assert [line[:3] for line in lines] == [
        "220",
        "250",
        "503",
        "250",
        "550",
        "503",
        "250",
        "354",
        "550",
        "500",
        "221",
    ]
    assert "5.1.1 unknown local recipient nobody" in lines[4] and "no DKIM key" in lines[8]
    assert env.drops() == []


def test_t_bcc_stripped_but_kept_in_envelope(env: Env) -> None:
    data = b"From: a@example.com\nTo: x@example.org\nBcc: secret@example.org,\n  root\nSubject: s\n\nhi\n"
    env_, msg = env.one_drop("-t", "-i", stdin=data)
    assert env_.recipients == ("x@example.org", "secret@example.org", "ops@example.com")
    assert b"secret" not in msg and b"Bcc" not in msg


def test_t_resent_headers(env: Env) -> None:
    data = (
        b"Resent-From: a@example.com\nResent-To: new@example.org\nResent-Bcc: s@example.org\n"
        b"From: orig@example.com\nTo: old@example.org\nSubject: s\n\nhi\n"
    )
    env_, msg = env.one_drop("-t", "-i", stdin=data)
    assert env_.recipients == ("new@example.org", "s@example.org")
    assert b"Resent-Bcc" not in msg and b"To: old@example.org" in msg


def test_t_adds_argument_recipients(env: Env) -> None:
    env_, _ = env.one_drop(
        "-t", "-i", "extra@example.org", stdin=b"From: a@example.com\nTo: x@example.org\n\nhi\n"
    )
    assert env_.recipients == ("extra@example.org", "x@example.org")


def test_missing_headers_are_added(env: Env) -> None:
    _, msg = env.one_drop("-i", "-F", "Backup Job", "x@example.org", stdin=b"Subject: s\n\nhi\n")
    assert header(msg, b"From") == b"Backup Job <noreply@example.com>"
    assert header(msg, b"Date")[:4] in (b"Mon,", b"Tue,", b"Wed,", b"Thu,", b"Fri,", b"Sat,", b"Sun,")
    assert header(msg, b"Message-ID").startswith(b"<") and header(msg, b"Subject") == b"s"


def test_echo_hi_sendmail_root(env: Env) -> None:
    env_, msg = env.one_drop("root", stdin=b"hi\n")
    assert env_.recipients == ("ops@example.com",)
    head, _, body = msg.partition(b"\r\n\r\n")
    assert body == b"hi\r\n" and b"From: noreply@example.com" in head


def test_maildrop_file_is_safe(env: Env) -> None:
    env.one_drop("x@example.org", stdin=b"From: a@example.com\n\nhi\n")
    assert env.maildrop.stat().st_mode & 0o7777 == 0o1733  # created by sendmail running as root
    [f] = [p for p in env.maildrop.iterdir()]
    assert f.stat().st_mode & 0o777 == 0o644 and len(f.name) == 32 and not f.name.startswith(".")


def test_digest_is_written_and_refreshed(env: Env) -> None:
    env.one_drop("root", stdin=b"From: a@example.com\n\nhi\n")
    digest_file = env.dir / ".config.toml.digest"
    assert digest_file.exists()
    first = digest_file.stat().st_mtime_ns
    env.config.write_text(env.config.read_text().replace("ops@example.com", "admin@example.com"))
    res = env.run("root", stdin=b"From: a@example.com\n\nhi\n")
    assert res.returncode == 0, res.stderr
    assert [e.recipients for e, _ in env.drops()].count(("admin@example.com",)) == 1
    assert digest_file.stat().st_mtime_ns != first


def test_bi_and_newaliases_succeed(env: Env) -> None:
    assert env.run("-bi").returncode == 0
    assert env.drops() == []


def test_environment_is_passed_only_as_config_path(env: Env) -> None:
    # a stray PYTHONPATH must not change what the stub imports (-E); the console script ignores it too here
    res = env.run("root", stdin=b"From: a@example.com\n\nhi\n", env={"PYTHONPATH": str(env.dir / "nowhere")})
    assert res.returncode == 0, res.stderr
    assert os.listdir(env.maildrop)
