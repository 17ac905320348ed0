"""`sendmail` never fails because the daemon went away: whenever the daemon dies or falls
silent during a hand-over (drop socket, SMTP socket, pickup poke), the message goes to the
maildrop as if the daemon had been down all along, and sendmail exits 0. A refusal is an
answer: its sysexit, and nothing in the maildrop.

The "daemons" here are real sockets bound at the daemon's paths by the test, scripted to
reset or stall at each point of the exchange; sendmail runs as a subprocess as root and as
nobody, with its timeouts cut to a second (a wrapper sets them before main runs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.queue import queue_file
from agent.submit import stub
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin

REPO = Path(__file__).parents[1]
PYTHON = "/usr/bin/python3"  # the venv's interpreter, reachable by nobody; -S: no site
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
WRAPPER = """
import sys
sys.path[0:1] = [{repo!r}]
from agent.submit import socket_client as c
c.CONNECT_TIMEOUT = c.COMMAND_TIMEOUT = c.REPLY_TIMEOUT = 1.0
from agent.submit.sendmail import main
sys.exit(main(["-t", "-i"], "sendmail"))
"""

Behaviour = Callable[[socket.socket], None]


# --- stand-in daemons: one scripted behaviour per accepted connection --------------------


class StandIn:
    """A listening Unix socket at `path` (mode 0666, like the daemon's) whose every connection
    is served by `behaviour` in a thread; counts connections."""

    def __init__(self, path: Path, behaviour: Behaviour) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # an earlier stand-in's, as a crashed daemon leaves its socket file
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.listen(8)
        self.behaviour = behaviour
        self.connections = 0
        self.held: list[socket.socket] = []  # silent ones: open until the test ends
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            self.behaviour(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


def read_until(conn: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    """Everything read until `marker` was among it (looked for only in the newest bytes)."""
    parts = [have]
    tail = have
    while marker not in tail:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("client closed")
        parts.append(chunk)
        tail = tail[-len(marker) :] + chunk
    return b"".join(parts)


def reset(conn: socket.socket) -> None:
    conn.close()  # unread data in our buffer: the client's next read gets ECONNRESET


def silent(conn: socket.socket) -> None:
    pass  # held open by StandIn, never read, never answered


# the drop socket: maildrop-format bytes until the client's EOF, one reply line
def drop_reset_mid_read(conn: socket.socket) -> None:
    conn.recv(100)
    conn.close()


def drop_close_after_eof(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass
    conn.close()  # stored or not, no reply


def drop_silent_after_eof(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def drop_reply(line: bytes) -> Behaviour:
    def serve(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass
        conn.sendall(line + b"\r\n")
        conn.close()

    return serve


# the SMTP socket: sendmail sends EHLO ahead of the greeting, then MAIL/RCPT/DATA pipelined
EHLO_REPLY = b"250-stand-in\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250 8BITMIME\r\n"


def smtp_until(conn: socket.socket, stage: str) -> bytes:
    """Play a good daemon up to `stage` ("ehlo": EHLO answered; "data": 354 sent)."""
    conn.sendall(b"220 stand-in ESMTP\r\n")
    have = read_until(conn, b"\r\n")
    conn.sendall(EHLO_REPLY)
    if stage == "ehlo":
        return have
    have = read_until(conn, b"DATA\r\n", have)
    rcpts = have.count(b"RCPT TO:")
    conn.sendall(b"250 ok\r\n" * (1 + rcpts) + b"354 go ahead\r\n")
    return have.split(b"DATA\r\n", 1)[1]


def smtp_reset_after_ehlo(conn: socket.socket) -> None:
    smtp_until(conn, "ehlo")
    time.sleep(0.1)  # the pipelined MAIL, RCPT, DATA arrive unread
    conn.close()


def smtp_reset_mid_data(conn: socket.socket) -> None:
    smtp_until(conn, "data")
    conn.recv(100)
    conn.close()


def smtp_close_after_dot(conn: socket.socket) -> None:
    read_until(conn, b"\r\n.\r\n", smtp_until(conn, "data"))
    conn.close()


def smtp_silent_after_dot(conn: socket.socket) -> None:
    read_until(conn, b"\r\n.\r\n", smtp_until(conn, "data"))


def smtp_final(line: bytes) -> Behaviour:
    def serve(conn: socket.socket) -> None:
        read_until(conn, b"\r\n.\r\n", smtp_until(conn, "data"))
        conn.sendall(line + b"\r\n")
        with contextlib.suppress(OSError):
            conn.recv(100)  # QUIT

    return serve


DROP_FAULTS: dict[str, Behaviour] = {
    "reset-on-accept": reset,
    "reset-mid-read": drop_reset_mid_read,
    "closed-after-eof": drop_close_after_eof,
    "never-reads": silent,
    "silent-after-eof": drop_silent_after_eof,
    "421-closing": drop_reply(b"421 4.3.2 shutting down"),
}
SMTP_FAULTS: dict[str, Behaviour] = {
    "reset-before-greeting": reset,
    "reset-after-ehlo": smtp_reset_after_ehlo,
    "reset-mid-data": smtp_reset_mid_data,
    "closed-after-dot": smtp_close_after_dot,
    "never-answers": silent,
    "silent-after-dot": smtp_silent_after_dot,
    "421-after-dot": smtp_final(b"421 4.3.2 shutting down"),
}


# --- the installation: config, maildrop, socket paths --------------------------------------


@pytest.fixture
def site() -> Iterator[AgentEnv]:
    """An installation nobody can reach (traversable dirs, a root-owned 1733 maildrop), no daemon."""
    with traversable_tmp("fallback-") as d, RelayStandin() as relay:
        env = AgentEnv(d, relay, extra={"limits": {"max_message_size": 30_000_000}})
        env.socket.parent.mkdir(mode=0o755)
        env.maildrop.mkdir()
        env.maildrop.chmod(0o1733)
        try:
            yield env
        finally:
            if env.proc is not None:
                env.stop()


def drop_socket(site: AgentEnv) -> Path:
    return Path(f"{site.socket}.drop")


def message(tag: str, size: int = 0) -> bytes:
    body = b"".join(b"line %08d of the body\n" % i for i in range(size // 25)) if size else b"hello\n"
    return f"From: app@example.com\nTo: {tag}@example.net\nSubject: {tag}\n\n".encode() + body


def sendmail(site: AgentEnv, user: str, msg: bytes) -> subprocess.CompletedProcess[bytes]:
    cmd = [PYTHON, "-S", "-E", "-c", WRAPPER.format(repo=str(REPO))]
    if user == "nobody":
        cmd = AS_NOBODY + cmd
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(site.config)}
    return subprocess.run(cmd, input=msg, capture_output=True, env=env, cwd="/", timeout=60)


def drops(site: AgentEnv) -> list[tuple[os.stat_result, queue_file.Envelope, bytes]]:
    paths = sorted(p for p in site.maildrop.iterdir() if not p.name.startswith("."))
    return [(p.stat(), *queue_file.decode(p.read_bytes())) for p in paths]


def assert_in_maildrop(site: AgentEnv, res: subprocess.CompletedProcess[bytes], tag: str, user: str) -> None:
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    [(st, env, msg)] = [d for d in drops(site) if d[1].recipients == (f"{tag}@example.net",)]
    assert st.st_uid == (65534 if user == "nobody" else 0)
    assert env.uid == st.st_uid and b"\r\nSubject: " + tag.encode() + b"\r\n" in msg


# --- (a) reset at each point and (b) silence: the maildrop takes the message, exit 0 -------


@pytest.mark.parametrize("fault", DROP_FAULTS)
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_drop_socket_gone_or_silent_falls_back_to_the_maildrop(site: AgentEnv, fault: str, user: str) -> None:
    drop = StandIn(drop_socket(site), DROP_FAULTS[fault])
    smtp = StandIn(site.socket, smtp_final(b"250 should not be asked"))
    try:
        res = sendmail(site, user, message(fault))
    finally:
        drop.close()
        smtp.close()
    assert_in_maildrop(site, res, fault, user)
    # root writes the maildrop itself; nobody tried the drop socket, and not the same
    # daemon's SMTP socket after it failed
    assert (drop.connections, smtp.connections) == ((1, 0) if user == "nobody" else (0, 0))


@pytest.mark.parametrize("fault", SMTP_FAULTS)
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_smtp_socket_gone_or_silent_falls_back_to_the_maildrop(site: AgentEnv, fault: str, user: str) -> None:
    smtp = StandIn(site.socket, SMTP_FAULTS[fault])  # a daemon without a drop socket
    try:
        res = sendmail(site, user, message(fault))
    finally:
        smtp.close()
    assert_in_maildrop(site, res, fault, user)
    assert smtp.connections == (1 if user == "nobody" else 0)


@pytest.mark.parametrize("user", ["nobody", "root"])
def test_a_pickup_fifo_nobody_reads_does_not_hold_sendmail(site: AgentEnv, user: str) -> None:
    fifo = Path(f"{site.socket}.pickup")
    os.mkfifo(fifo, 0o622)
    fifo.chmod(0o622)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a hung daemon: attached, never reading
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(writer, b"\n" * 4096)  # full: the poke's write cannot go in
        drop = StandIn(drop_socket(site), silent)
        try:
            t0 = time.monotonic()
            res = sendmail(site, user, message("poked"))
            elapsed = time.monotonic() - t0
        finally:
            drop.close()
    finally:
        os.close(writer)
        os.close(reader)
    assert_in_maildrop(site, res, "poked", user)
    assert elapsed < 10


# --- (c) a refusal is an answer: its sysexit, nothing in the maildrop ---------------------


REFUSALS = [
    (b"451 4.3.0 internal error; try again later", 75),
    (b"452 4.2.2 over quota for uid 65534", 75),
    (b"550 5.7.1 no DKIM key for this domain", 77),
    (b"550 5.1.1 <x@example.net>: unknown user", 67),
    (b"554 5.6.0 malformed hand-over", 65),
]


@pytest.mark.parametrize(("reply", "code"), REFUSALS)
def test_a_drop_socket_refusal_is_an_answer(site: AgentEnv, reply: bytes, code: int) -> None:
    drop = StandIn(drop_socket(site), drop_reply(reply))
    try:
        res = sendmail(site, "nobody", message("refused"))
    finally:
        drop.close()
    assert res.returncode == code, res.stderr
    assert res.stderr.decode().strip() == f"sendmail: {reply.decode()}"
    assert drops(site) == []


@pytest.mark.parametrize(("reply", "code"), REFUSALS[:3])
def test_an_smtp_refusal_of_the_message_is_an_answer(site: AgentEnv, reply: bytes, code: int) -> None:
    smtp = StandIn(site.socket, smtp_final(reply))
    try:
        res = sendmail(site, "nobody", message("refused"))
    finally:
        smtp.close()
    assert res.returncode == code, res.stderr
    assert reply.decode() in res.stderr.decode()
    assert drops(site) == []


# --- and a real daemon afterwards delivers what the fallback stored, once ------------------


def test_a_later_daemon_delivers_what_the_fallback_stored(site: AgentEnv) -> None:
    cases = [("nobody", "drop", "reset-mid-read"), ("nobody", "smtp", "reset-mid-data"), ("root", "drop", "")]
    for user, where, fault in cases:
        tag = f"later-{user}-{where}"
        if where == "drop":
            standin = StandIn(drop_socket(site), DROP_FAULTS[fault or "never-reads"])
        else:
            standin = StandIn(site.socket, SMTP_FAULTS[fault])
        try:
            assert_in_maildrop(site, sendmail(site, user, message(tag)), tag, user)
        finally:
            standin.close()
    site.start()  # the stand-ins' socket files are still there, as after a crash
    relay = site.relay
    assert relay is not None
    relay.wait_for(len(cases), 20)
    site.wait_queue_empty(10)
    got = sorted(r for m in relay.messages for r in m.rcpt_tos)
    assert got == sorted(f"later-{u}-{w}@example.net" for u, w, _ in cases)


# --- the real daemon, SIGKILLed while a big message is handed over -------------------------


def has_socket(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd")
        )
    return False


def installed_stub(site: AgentEnv) -> Path:
    """The /usr/sbin/sendmail that install writes, on an interpreter nobody can run."""
    path = site.dir / "bin" / "sendmail"
    path.parent.mkdir(exist_ok=True)
    path.write_text(stub.render("sendmail", PYTHON, [str(REPO)]))
    path.chmod(0o755)
    return path


def test_real_daemon_killed_mid_hand_over(site: AgentEnv, tmp_path: Path) -> None:
    site.start()
    big = tmp_path / "big.eml"
    big.write_bytes(message("killed", 20_000_000))
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(site.config)}
    with big.open("rb") as stdin:
        proc = subprocess.Popen(
            [*AS_NOBODY, str(installed_stub(site)), "-t", "-i"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
        )
        wait_until(lambda: has_socket(proc.pid) or proc.poll() is not None, 20)
        site.kill9()  # the hand-over has begun: sendmail is connected to the drop socket
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == b""
    stored = [d for d in drops(site) if d[1].recipients == ("killed@example.net",)]
    assert 1 <= len(stored) <= 2  # sendmail's own; perhaps the dying daemon's too (the window)
    site.start()
    relay = site.relay
    assert relay is not None
    relay.wait_for(1, 30)
    site.wait_queue_empty(30)
    assert 1 <= sum("killed@example.net" in m.rcpt_tos for m in relay.messages) <= len(stored)
