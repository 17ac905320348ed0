"""sendmail failures (exit status + exactly one stderr line), the daemon socket path, startup hygiene."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import UnixSocketController
from aiosmtpd.smtp import SMTP

from agent.errors import UnknownRecipientError
from agent.queue import queue_file
from agent.submit import socket_client
from tests.support.agent_env import traversable_tmp
from tests.test_sendmail_callers import CONFIG, VENV_BIN, Env, make_env, write_stub

REPO = Path(__file__).parents[1]
SIGNED = b"From: App <app@example.com>\nTo: x@example.org\nSubject: s\n\nhello\n"


@pytest.fixture(params=["console", "stub"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    return make_env(tmp_path, request.param)


@pytest.fixture
def stub_env(tmp_path: Path) -> Env:
    return make_env(tmp_path, "stub")


def assert_fails(res: subprocess.CompletedProcess[bytes], code: int, words: str) -> None:
    err = res.stderr.decode()
    assert res.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("sendmail: ") and err.endswith("\n"), err
    assert words in err, err


def test_no_recipients(env: Env) -> None:
    assert_fails(env.run("-t", "-i", stdin=b"From: a@example.com\nSubject: s\n\nhi\n"), 65, "no recipients")
    assert_fails(
        env.run("-t", stdin=b"From: a@example.com\nTo: undisclosed-recipients:;\n\nhi\n"), 65, "no recipients"
    )


def test_nul_bytes(env: Env) -> None:
    assert_fails(
        env.run("-i", "x@example.org", stdin=b"From: a@example.com\n\nh\0i\n"),
        65,
        "message contains NUL bytes",
    )


def test_unknown_flag(env: Env) -> None:
    assert_fails(env.run("-k", "x@example.org"), 64, "unknown option -k")


def test_unparseable_address(env: Env) -> None:
    assert_fails(
        env.run("-t", "-i", stdin=b"From: a@example.com\nTo: Broken <x@example.org\n\nhi\n"), 65, "address"
    )


def test_oversize(env: Env) -> None:
    big = SIGNED + b"x" * 100_001
    assert_fails(env.run("-i", "x@example.org", stdin=big), 65, "size limit of 100000")
    assert_fails(env.run("x@example.org", stdin=big), 65, "size limit of 100000")  # the lone-dot reader too
    assert env.drops() == []


def test_malformed_config(env: Env) -> None:
    env.config.write_text("[queue\npath=1\n")
    assert_fails(env.run("x@example.org", stdin=SIGNED), 78, "not valid TOML")
    env.config.write_text('[queue]\nmin_free = "lots"\n')
    assert_fails(env.run("x@example.org", stdin=SIGNED), 78, "queue.min_free")


def test_missing_config_files(env: Env) -> None:
    missing = str(env.dir / "missing.toml")
    assert_fails(env.run("-C", missing, "x@example.org", stdin=SIGNED), 78, "missing.toml")
    assert_fails(
        env.run("x@example.org", stdin=SIGNED, env={"RELAY_AGENT_CONFIG": missing}), 78, "missing.toml"
    )


def test_unknown_local_recipient(env: Env) -> None:
    res = env.run("-i", "x@example.org", "nobody", stdin=SIGNED)
    assert_fails(res, 67, "unknown local recipient nobody: add it to [aliases] (or set aliases.default)")
    assert env.drops() == []


def test_from_domain_without_dkim_key(env: Env) -> None:
    res = env.run("-t", "-i", stdin=b"From: a@unsigned.example\nTo: x@example.org\n\nhi\n")
    assert_fails(res, 77, "no DKIM key for From: domain unsigned.example")
    env.config.write_text(env.config.read_text().replace('unsigned = "reject"', 'unsigned = "send"'))
    env.one_drop("-t", "-i", stdin=b"From: a@unsigned.example\nTo: x@example.org\n\nhi\n")


def test_flush_without_daemon(stub_env: Env) -> None:
    assert_fails(stub_env.run("-q"), 75, "daemon is not running")


# --- as an unprivileged user (tests run as root; the venv's python is under /root) ---


@pytest.fixture
def world_dir() -> Iterator[Path]:
    with traversable_tmp("sm-") as d:
        yield d


def world_config(d: Path) -> None:
    (d / "config.toml").write_text(CONFIG.format(d=d))


def run_as_nobody(d: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    sendmail = write_stub(d / "bin" / "sendmail", "/usr/bin/python3", [str(REPO)])
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(sendmail), *args]
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(d / "config.toml")}
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env, cwd="/", timeout=30)


def test_unwritable_maildrop_as_unprivileged_user(world_dir: Path) -> None:
    world_config(world_dir)
    (world_dir / "maildrop").mkdir(mode=0o755)
    res = run_as_nobody(world_dir, "x@example.org", stdin=SIGNED)
    assert_fails(res, 75, f"cannot write to maildrop {world_dir}/maildrop: Permission denied")
    res = run_as_nobody(world_dir / "absent", "x@example.org", stdin=SIGNED)
    assert_fails(res, 78, "does not exist")


def test_unprivileged_user_writes_to_1733_maildrop(world_dir: Path) -> None:
    world_config(world_dir)
    md = world_dir / "maildrop"
    md.mkdir()
    md.chmod(0o1733)
    res = run_as_nobody(world_dir, "root", stdin=SIGNED)
    assert res.returncode == 0, res.stderr
    [f] = list(md.iterdir())
    assert f.stat().st_uid == 65534 and f.stat().st_mode & 0o777 == 0o644
    env_, _ = queue_file.decode(f.read_bytes())
    assert env_.uid == 65534 and env_.recipients == ("ops@example.com",)
    assert env_.sender == "noreply@example.com"  # nobody's login name, rewritten


# --- daemon up: a real SMTP server on the Unix socket ---


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = ""
        self.mail_options: list[str] = []

    async def handle_MAIL(
        self, server: Any, session: Any, queue_file: Any, address: str, options: list[str]
    ) -> str:
        queue_file.mail_from = address
        queue_file.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, queue_file: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        queue_file.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, queue_file: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            (queue_file.mail_from, list(queue_file.rcpt_tos), queue_file.content, queue_file.mail_options)
        )
        return "250 2.0.0 Ok: queued as TEST"


class EtrnSMTP(SMTP):  # type: ignore[misc]
    async def smtp_ETRN(self, arg: str) -> None:
        await self.push("250 2.0.0 queue flush started" if arg == "relay-agent" else "458 unknown queue")


class Daemon(UnixSocketController):  # type: ignore[misc]
    def factory(self) -> SMTP:
        return EtrnSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder()
    ctl = Daemon(rec, unix_socket=str(tmp_path / "submit.sock"))
    ctl.start()
    try:
        yield rec
    finally:
        ctl.stop()


def test_socket_submission_250(env: Env, daemon: Recorder) -> None:
    res = env.run("-t", "-i", "-f", "app@example.com", stdin=SIGNED.replace(b"hello\n", b".dot\n.\nend\n"))
    assert res.returncode == 0 and res.stderr == b""
    [(sender, rcpts, content, options)] = daemon.messages
    assert (sender, rcpts) == ("app@example.com", ["x@example.org"])
    assert content.endswith(b"\r\n\r\n.dot\r\n.\r\nend\r\n") and b"\r\nMessage-ID: <" in content
    assert any(o.startswith("SIZE=") for o in options)
    assert env.drops() == []  # not in the maildrop: the daemon has it


@pytest.mark.parametrize(
    ("where", "reply", "code"),
    [
        ("rcpt", "550 5.1.1 <x@example.org>: unknown user", 67),
        ("data", "550 5.7.1 no DKIM key for this domain", 77),
        ("data", "452 4.3.1 insufficient system storage", 75),
        ("data", "552 5.3.4 message too big", 65),
        ("rcpt", "451 4.3.0 try again later", 75),
        ("data", "554 5.6.0 bad message", 65),
    ],
)
def test_socket_refusals_map_to_sysexits(
    stub_env: Env, daemon: Recorder, where: str, reply: str, code: int
) -> None:
    if where == "rcpt":
        daemon.rcpt_replies["x@example.org"] = reply
    else:
        daemon.data_reply = reply
    res = stub_env.run("-i", "x@example.org", stdin=SIGNED)
    assert_fails(res, code, reply)
    assert stub_env.drops() == [] and daemon.messages == []


def test_flush_with_daemon(stub_env: Env, daemon: Recorder) -> None:
    res = stub_env.run("-q")
    assert res.returncode == 0 and res.stderr == b""


def test_stale_socket_falls_back_to_maildrop(stub_env: Env) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stub_env.dir / "submit.sock"))  # bound, never listening: connection refused
    try:
        env_, _ = stub_env.one_drop("-i", "x@example.org", stdin=SIGNED)
    finally:
        sock.close()
    assert env_.recipients == ("x@example.org",)


def hand_server(
    path: str, ehlo: bytes, rcpt_reply: bytes = b"250 ok\r\n"
) -> tuple[threading.Thread, list[bytes]]:
    """A scripted SMTP server (aiosmtpd offers neither DSN nor PIPELINING); records each recv chunk."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    chunks: list[bytes] = []
    replies = {b"EHLO": ehlo, b"MAIL": b"250 ok\r\n", b"RCPT": rcpt_reply, b"DATA": b"354 go\r\n"}

    def serve() -> None:
        conn, _ = srv.accept()
        with srv, conn:
            conn.sendall(b"220 hi\r\n")
            data, in_data = b"", False
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                data += chunk
                while b"\r\n" in data:
                    line, data = data.split(b"\r\n", 1)
                    if in_data:
                        in_data = line != b"."
                        out = b"" if in_data else b"250 queued\r\n"
                    else:
                        out = b"" if line == b"QUIT" else replies.get(line[:4], b"500 what\r\n")
                        in_data = line == b"DATA"
                    with contextlib.suppress(OSError):  # the client does not wait for 221
                        conn.sendall(out)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread, chunks


@pytest.mark.parametrize("pipelining", [False, True])
def test_dsn_parameters_and_pipelining(tmp_path: Path, pipelining: bool) -> None:
    path = str(tmp_path / "h.sock")
    ehlo = b"250-x\r\n250-DSN\r\n" + (b"250-PIPELINING\r\n" if pipelining else b"") + b"250 SIZE 1000\r\n"
    thread, chunks = hand_server(path, ehlo)
    dsn = (("notify", "SUCCESS,FAILURE"), ("ret", "HDRS"), ("envid", "id+1 x"))
    try:
        socket_client.submit(path, "h", "a@example.com", ["b@example.org"], b"Subject: s\r\n\r\n.x\r\n", dsn)
    finally:
        thread.join(5)
    seen = b"".join(chunks).split(b"\r\n")
    assert b"MAIL FROM:<a@example.com> SIZE=18 RET=HDRS ENVID=id+2B1+20x" in seen
    assert b"RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE" in seen
    assert b"..x" in seen and seen[-2:] == [b"QUIT", b""]
    batched = any(c.startswith(b"MAIL") and c.endswith(b"DATA\r\n") for c in chunks)
    assert batched == pipelining


def test_pipelined_refusal_abandons_data(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sock")
    thread, chunks = hand_server(path, b"250-x\r\n250 PIPELINING\r\n", b"550 5.1.1 no such user\r\n")
    try:
        with pytest.raises(UnknownRecipientError):
            socket_client.submit(path, "h", "a@example.com", ["b@example.org"], b"Subject: s\r\n\r\nx\r\n")
    finally:
        thread.join(5)
    assert b"Subject" not in b"".join(chunks)  # the message never went out


# --- startup hygiene: what the fast path imports ---

FORBIDDEN = [
    "os",
    "re",
    "json",
    "tomllib",
    "socket",
    "email",
    "asyncio",
    "typing",
    "dataclasses",
    "agent.config",
    "__future__",  # ~0.3 ms: the fast-path modules quote the annotations they cannot evaluate
]

PROBE = """
import sys
sys.path[0:1] = [{repo!r}]
sys.argv = ["sendmail", "-t", "-i"]
import io
sys.stdin = io.TextIOWrapper(io.BytesIO({msg!r}))
from agent.submit.sendmail import main
code = main()
bad = sorted(m for m in {forbidden!r} if m in sys.modules)
print(code, ",".join(bad))
"""


def probe(env: Env) -> tuple[str, str]:
    code = PROBE.format(repo=str(REPO), msg=SIGNED, forbidden=FORBIDDEN)
    cmd = [str(VENV_BIN / "python"), "-S", "-E", "-c", code]
    res = subprocess.run(cmd, capture_output=True, env={"RELAY_AGENT_CONFIG": str(env.config)}, timeout=30)
    assert res.returncode == 0, res.stderr
    code, _, bad = res.stdout.decode().strip().partition(" ")
    return code, bad


def test_fast_path_imports_daemon_up(stub_env: Env, daemon: Recorder) -> None:
    code, bad = probe(stub_env)
    assert code == "0" and "agent.config" in bad.split(",")  # no digest yet: the slow path parses TOML
    assert (stub_env.dir / ".config.toml.digest").exists()
    assert probe(stub_env) == ("0", "")  # fresh digest: nothing forbidden imported
    assert len(daemon.messages) == 2


def test_fast_path_imports_daemon_down(stub_env: Env) -> None:
    probe(stub_env)
    assert probe(stub_env) == ("0", "")
    assert len(stub_env.drops()) == 2


def test_stub_text() -> None:
    text = write_stub(
        Path(tempfile.mkdtemp()) / "s", "/opt/venv/bin/python", ["/opt/src", "/opt/venv/site"]
    ).read_text()
    assert (
        text.startswith("#!/opt/venv/bin/python -SE\n")
        and "sys.path[0:1] = ['/opt/src', '/opt/venv/site']" in text
    )
    assert "from agent.submit.sendmail import main" in text and "posix._exit(code)" in text
    assert sys.executable
    with pytest.raises(ValueError):
        write_stub(Path(tempfile.mkdtemp()) / "s", "relative/python", [])
