"""The drop socket: a whole maildrop-format message in, one reply line out.

A real daemon; the client is sendmail's own (agent.submit.socket_client.hand_over). The
bytes are untrusted: whatever they claim, the uid is the peer's, and malformed,
truncated or oversized input is refused with a reply while the daemon goes on.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import MessageError, TooBigError, UnknownRecipientError
from agent.queue import queue_file
from agent.submit import socket_client
from tests.support.agent_env import AgentEnv, wait_until
from tests.support.relay_standin import RelayStandin

MAX_SIZE = 100_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentEnv]:
    with RelayStandin() as relay:
        agent = AgentEnv(
            tmp_path_factory.mktemp("drop"), relay, extra={"limits": {"max_message_size": MAX_SIZE}}
        )
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


def drop(site: AgentEnv) -> str:
    return socket_client.drop_path(str(site.socket))


def data(rcpt: str, body: bytes = b"Subject: drop\r\n\r\nhi\r\n", uid: int = 4242) -> bytes:
    return queue_file.encode(queue_file.Envelope("app@example.com", (rcpt,), time.time(), (), uid), body)


def raw_reply(site: AgentEnv, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(drop(site))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return s.recv(4096)


def received(site: AgentEnv, rcpt: str) -> bytes:
    relay = site.relay
    assert relay is not None
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in relay.messages), 10)
    [m] = [m for m in relay.messages if rcpt in m.rcpt_tos]
    return bytes(m.data)


def test_drop_socket_has_the_smtp_sockets_mode(site: AgentEnv) -> None:
    st = os.stat(drop(site))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(os.stat(site.socket).st_mode) == 0o666


def test_hand_over_is_queued_signed_and_named_by_the_peers_uid(site: AgentEnv) -> None:
    rcpt = f"drop-{os.urandom(3).hex()}@example.net"
    socket_client.hand_over(drop(site), data(rcpt, uid=4242))  # the file's uid line is a claim
    got = received(site, rcpt)
    assert b"DKIM-Signature:" in got
    line = next(ln for ln in got.split(b"\r\n") if ln.startswith(b"Received: by"))
    assert b"from userid 0" in line and b"4242" not in got
    assert f"uid={os.getuid()} (dropped)" in site.log()


def test_the_reply_names_the_queue_id_pickup_gives_the_file(site: AgentEnv) -> None:
    rcpt = f"qid-{os.urandom(3).hex()}@example.net"
    reply = raw_reply(site, data(rcpt)).decode()
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    qid = reply.split()[-1]
    received(site, rcpt)
    lines = [ln for ln in site.log().splitlines() if f" {qid}: " in ln]
    assert any("from=<app@example.com>, nrcpt=1" in ln and ln.endswith("(dropped)") for ln in lines)
    assert any("from=<app@example.com>, nrcpt=1" in ln and ln.endswith("(maildrop)") for ln in lines)
    assert any(f"to=<{rcpt}>" in ln and "status=sent" in ln for ln in lines)


def test_refusals_come_back_as_the_errors_sendmail_exits_with(site: AgentEnv) -> None:
    with pytest.raises(UnknownRecipientError, match="550"):
        socket_client.hand_over(drop(site), data("nosuchlocaluser"))
    with pytest.raises(MessageError, match=r"554 5\.6\.0 malformed"):
        socket_client.hand_over(drop(site), data("x@example.net")[:-5])  # no end marker
    with pytest.raises(TooBigError, match="552"):
        socket_client.hand_over(drop(site), data("x@example.net", b"\r\n" + b"y" * (MAX_SIZE + 10)))


def test_garbage_oversize_and_silence_get_a_reply_and_the_daemon_goes_on(site: AgentEnv) -> None:
    assert raw_reply(site, os.urandom(512)).startswith(b"554 5.6.0 ")
    assert raw_reply(site, b"").startswith(b"554 5.6.0 ")
    assert raw_reply(site, b"x" * (MAX_SIZE + (1 << 20) + 1)).startswith(b"552 5.3.4 ")
    assert not any((site.queue_dir / "corrupt").iterdir())  # refused, nothing half-kept
    rcpt = f"after-{os.urandom(3).hex()}@example.net"
    socket_client.hand_over(drop(site), data(rcpt))
    assert received(site, rcpt)


def test_no_drop_socket_means_unavailable(tmp_path: Path) -> None:
    with pytest.raises(socket_client.Unavailable):
        socket_client.hand_over(str(tmp_path / "none.sock.drop"), b"x")


def test_sigterm_with_a_client_stalled_mid_hand_over_stops_in_time_and_stores_nothing(
    tmp_path: Path,
) -> None:
    with RelayStandin() as relay:
        agent = AgentEnv(tmp_path, relay)
        agent.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(drop(agent))
            s.sendall(data("stalled@example.net")[:100])  # and then nothing, never EOF
            time.sleep(0.3)  # accepted and being read by a worker
            t0 = time.monotonic()
            assert agent.stop() == 0
            assert time.monotonic() - t0 < 10  # systemd's TimeoutStopSec
            s.settimeout(5)
            assert not s.recv(4096).startswith(b"250")  # cut off: EOF or a refusal, never "queued"
        assert not [n for n in os.listdir(agent.maildrop) if not n.startswith(".")]
        assert not relay.messages


def test_concurrent_hand_overs_each_get_their_own_id_and_arrive_once(site: AgentEnv) -> None:
    """More clients at once than the drop socket has workers: none is lost or doubled."""
    from concurrent.futures import ThreadPoolExecutor

    rcpts = [f"conc-{i}-{os.urandom(2).hex()}@example.net" for i in range(40)]
    with ThreadPoolExecutor(40) as pool:
        replies = list(pool.map(lambda r: raw_reply(site, data(r)).decode(), rcpts))
    assert all(r.startswith("250 2.0.0 Ok: queued as ") for r in replies), replies
    assert len({r.split()[-1] for r in replies}) == len(rcpts)
    relay = site.relay
    assert relay is not None
    wait_until(lambda: all(any(r in m.rcpt_tos for m in relay.messages) for r in rcpts), 20)
    for r in rcpts:
        assert sum(r in m.rcpt_tos for m in relay.messages) == 1
