"""No local client can stall anyone else: slowloris clients on the drop socket and the SMTP
socket, hand-overs past their deadline, the caps on sessions, running out of file
descriptors, and the drop socket's memory with big concurrent hand-overs.

The real daemon where the time allows; the drop socket's deadline (30 s) and the SMTP
session deadline (10 min) are tried on a DropServer / SessionGuard in this process with
short ones, over real sockets into a real maildrop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from agent import config
from agent.dkim.signing import Signer
from agent.intake import listen_guard, pickup
from agent.intake.cleanup import Cleanup
from agent.intake.drop_socket import DropServer
from agent.queue import queue_file
from agent.queue.store import Queue
from agent.submit import socket_client
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin
from tests.test_sendmail_callers import write_stub

REPO = Path(__file__).resolve().parent.parent
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SLOW = 100  # slowloris clients on each socket


def drop_data(rcpt: str, body: bytes = b"Subject: slow\r\n\r\nhi\r\n") -> bytes:
    return queue_file.encode(queue_file.Envelope("app@example.com", (rcpt,), time.time(), (), 0), body)


def connect(path: str, tries: float = 5.0) -> socket.socket:
    """A blocking connect that waits out a full listen backlog (EAGAIN on AF_UNIX)."""
    until = time.monotonic() + tries
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            s.setblocking(True)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > until:
                raise
            time.sleep(0.01)


class Slowloris:
    """Clients that each send one byte of a plausible start every `every` seconds, for ever."""

    def __init__(self, path: str, start: bytes, count: int, every: float = 2.0) -> None:
        self.socks = [connect(path) for _ in range(count)]
        self.start, self.every = start, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        pos = 0
        while not self.stop.wait(self.every):
            for s in self.socks:
                try:
                    s.send(self.start[pos % len(self.start) : pos % len(self.start) + 1])
                except OSError:
                    pass
            pos += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def site() -> Iterator[AgentEnv]:
    # `nobody` must reach the sockets and run sendmail: not under pytest's 0700 tmp dirs
    with traversable_tmp("relay-agent-slow-") as root, RelayStandin() as relay:
        agent = AgentEnv(root, relay)
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


def arrived_once(site: AgentEnv, rcpt: str) -> None:
    relay = site.relay
    assert relay is not None
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in relay.messages), 10)
    time.sleep(0.3)  # a second copy would follow the first at once
    assert sum(rcpt in m.rcpt_tos for m in relay.messages) == 1


def test_sendmail_gets_through_while_100_slowloris_clients_hold_each_socket(site: AgentEnv) -> None:
    drop = socket_client.drop_path(str(site.socket))
    slow = [
        Slowloris(drop, queue_file.MAGIC, SLOW),
        Slowloris(str(site.socket), b"EHLO slow.example\r\n", SLOW),
    ]
    try:
        time.sleep(0.5)  # all accepted and trickling
        stub = write_stub(site.dir / "bin" / "sendmail", "/usr/bin/python3", [str(REPO)])
        for user in ("root", "nobody"):
            rcpt = f"slow-{user}-{os.urandom(3).hex()}@example.net"
            cmd = [str(stub), "-i", "-f", "app@example.com", rcpt]
            t0 = time.monotonic()
            res = subprocess.run(
                cmd if user == "root" else [*AS_NOBODY, *cmd],
                input=b"Subject: past the slow ones\n\nhi\n",
                env=site.env,
                capture_output=True,
                cwd="/",
                timeout=30,
            )
            took = time.monotonic() - t0
            assert res.returncode == 0, res.stderr
            assert took < 1.0, f"{user}'s sendmail took {took:.2f}s"
            arrived_once(site, rcpt)
        rcpt = f"slow-smtp-{os.urandom(3).hex()}@example.net"
        t0 = time.monotonic()
        code, _ = site.smtp_data(b"Subject: smtp\r\n\r\nhi\r\n", rcpt=rcpt)
        assert code == 250 and time.monotonic() - t0 < 1.0
        arrived_once(site, rcpt)
        assert "uid=65534 (dropped)" in site.log()
    finally:
        for s in slow:
            s.close()


# --- the drop socket's deadline and cap, in this process ------------------------------------


class InProcess:
    """A DropServer in this process, on a real socket, storing into a real maildrop."""

    def __init__(self, tmp: Path) -> None:
        self.agent = AgentEnv(tmp, None)
        cfg = config.load(str(self.agent.config))
        queue = Queue(cfg.queue.path, cfg.queue.min_free)
        queue.ensure_dirs()
        pickup.ensure_maildrop(cfg.queue.maildrop)
        self.cleanup = Cleanup(cfg, Signer(cfg), queue)
        self.path = str(tmp / "test.drop")
        self.server: DropServer | None = None

    def start(self, cap: int = 16, deadline: float = 30.0) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(16)
        self.server = DropServer(sock, lambda: self.cleanup, lambda: None, cap=cap, deadline=deadline)

    def stored(self, dot_files: bool = True) -> list[str]:
        return [n for n in os.listdir(self.agent.maildrop) if dot_files or not n.startswith(".")]


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[InProcess]:
    site = InProcess(tmp_path)
    yield site
    if site.server is not None:
        site.server.close()


@pytest.mark.parametrize("stall_at", ["header", "body"])
def test_a_hand_over_past_its_deadline_is_cut_off_and_nothing_is_stored(
    in_process: InProcess, stall_at: str
) -> None:
    in_process.start(deadline=1.0)
    path = in_process.path
    data = drop_data("late@example.net", b"Subject: late\r\n\r\n" + b"z" * 5000)
    cut = 10 if stall_at == "header" else len(data) - 2000
    with connect(path) as s:
        s.sendall(data[:cut])
        s.settimeout(0.2)
        t0 = time.monotonic()
        reply = b""
        for pos in range(cut, len(data)):  # a byte every 0.2 s: never idle, never done
            try:
                reply = s.recv(4096)
                break
            except TimeoutError:
                s.send(data[pos : pos + 1])
        took = time.monotonic() - t0
    assert reply.startswith(b"421 4.4.2 "), reply
    assert took < 2.0
    assert in_process.stored() == []  # neither a file nor a dot-file left behind
    # and the next one is served as ever
    socket_client.hand_over(path, drop_data("ontime@example.net"))
    assert len(in_process.stored()) == 1


@pytest.mark.parametrize(
    ("tamper", "reply"),
    [
        (lambda d: d[:-300] + b"\0" + d[-299:], b"554 5.6.0 message contains NUL bytes"),
        (lambda d: d + b"more", b"554 5.6.0 malformed hand-over: bytes after the message"),
        (lambda d: d[:-1], b"554 5.6.0 malformed hand-over: queue file is incomplete"),
    ],
)
def test_what_the_stream_checks_as_it_passes_refuses_and_stores_nothing(
    in_process: InProcess, tamper: Callable[[bytes], bytes], reply: bytes
) -> None:
    """Checked a chunk at a time while the message streams into its file (not after reading
    it whole): the file it was going into goes too."""
    in_process.start()
    data = tamper(drop_data("stream@example.net", b"Subject: s\r\n\r\n" + b"q" * 300_000))
    with connect(in_process.path) as s:
        s.settimeout(10)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(4096).startswith(reply)
    assert in_process.stored() == []


def test_past_the_cap_a_hand_over_gets_421_at_once(in_process: InProcess) -> None:
    in_process.start(cap=3)
    path = in_process.path
    idle = [connect(path) for _ in range(3)]
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(socket_client.Lost, match="421"):  # sendmail then uses the maildrop
            socket_client.hand_over(path, drop_data("busy@example.net"))
        assert time.monotonic() - t0 < 0.5
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    socket_client.hand_over(path, drop_data("free@example.net"))
    assert len(in_process.stored()) == 1


# --- SMTP sessions: cap and deadline ------------------------------------------------------


def test_smtp_sessions_are_capped_and_end_at_their_deadline(tmp_path: Path) -> None:
    path = str(tmp_path / "smtp.sock")

    async def main() -> tuple[bytes, bytes, bytes, float]:
        guard = listen_guard.SessionGuard(2, deadline=0.5)
        server = await asyncio.get_running_loop().create_unix_server(
            guard.wrap(lambda: SMTP(object(), hostname="test")), path
        )
        try:
            first = await asyncio.open_unix_connection(path)
            second = await asyncio.open_unix_connection(path)
            greeting = await first[0].readline()
            await second[0].readline()
            third = await asyncio.open_unix_connection(path)
            busy = await asyncio.wait_for(third[0].read(), 1)
            t0 = time.monotonic()
            late = await asyncio.wait_for(first[0].read(), 3)  # until EOF
            took = time.monotonic() - t0
            for _, w in (first, second, third):
                w.close()
            await asyncio.sleep(0.1)
            assert guard.live == 0
            return greeting, busy, late, took
        finally:
            server.close()

    greeting, busy, late, took = asyncio.run(main())
    assert greeting.startswith(b"220 ")
    assert busy.startswith(b"421 4.3.2 ")
    assert late.startswith(b"421 4.4.2 ") and took < 1.0


# --- out of file descriptors ---------------------------------------------------------------


def test_out_of_descriptors_logs_a_line_not_a_traceback_per_accept_and_recovers(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    agent = AgentEnv(tmp_path, relay_standin)
    agent.start()
    clients: list[socket.socket] = []
    try:
        assert agent.proc is not None
        subprocess.run(["prlimit", f"--pid={agent.proc.pid}", "--nofile=96:96"], check=True)
        for path in (str(agent.socket), socket_client.drop_path(str(agent.socket))):
            for _ in range(150):  # more than the limit leaves: the rest wait in the backlog
                try:
                    clients.append(connect(path, tries=0.2))
                except BlockingIOError:
                    break
        time.sleep(3)  # asyncio retries accepting every second
        log = agent.log()
        assert "Traceback" not in log
        assert (
            1 <= sum("file descriptors" in ln or "Too many open files" in ln for ln in log.splitlines()) <= 4
        )
        for s in clients:
            s.close()
        clients = []
        rcpt = f"after-emfile-{os.urandom(3).hex()}@example.net"
        wait_until(agent.listening, 5)
        assert agent.smtp_data(b"Subject: again\r\n\r\nhi\r\n", rcpt=rcpt)[0] == 250
        socket_client.hand_over(socket_client.drop_path(str(agent.socket)), drop_data(rcpt + ".drop"))
        wait_until(lambda: sum(rcpt in m.rcpt_tos for m in relay_standin.messages) == 1, 10)
        assert "Traceback" not in agent.log()
    finally:
        for s in clients:
            s.close()
        assert agent.stop() == 0


# --- memory -----------------------------------------------------------------------------


def vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(ln for ln in fh if ln.startswith(key + ":"))
    return int(line.split()[1]) >> 10  # MB


def test_five_concurrent_20mb_hand_overs_keep_the_daemon_small(tmp_path: Path) -> None:
    with socket.socket() as s:  # a relay that is down: delivery does not read them meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = AgentEnv(tmp_path, None, extra={"relay": {"host": "127.0.0.1", "port": port}})
    agent.start()
    try:
        assert agent.proc is not None
        body = b"Subject: big\r\n\r\n" + (b"m" * 76 + b"\r\n") * (20_000_000 // 78)
        datas = [drop_data(f"big{i}@example.net", body) for i in range(5)]
        replies: list[object] = []

        def hand(data: bytes) -> None:
            try:
                socket_client.hand_over(socket_client.drop_path(str(agent.socket)), data)
                replies.append("ok")
            except Exception as exc:  # reported below
                replies.append(exc)

        threads = [threading.Thread(target=hand, args=(d,)) for d in datas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert replies == ["ok"] * 5
        assert vm(agent.proc.pid, "VmHWM") < 100
    finally:
        assert agent.stop() == 0
