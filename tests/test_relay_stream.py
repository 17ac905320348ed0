"""Relaying from the queue file: the message is streamed, dot-stuffed a chunk at a time, never
held whole in memory; bounces return at most the headers of a big original."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import RelayConfig
from agent.mail import bounce
from agent.mail.dot_stream import DotStuffer
from agent.mail.smtp_text import dot_stuff
from agent.queue import queue_file
from agent.queue.message_source import SMALL, MessageSource, open_queued
from agent.relay.connection import RelayConnection
from tests.support.agent_env import AgentEnv
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
ENV = queue_file.Envelope("a@example.com", ("b@example.net",), 1700000000.0)

# bytes that make line starts, dots and split line ends likely
tricky = st.binary(max_size=300) | st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"x", b".."])).map(
    b"".join
)


@settings(max_examples=400, deadline=None)
@given(message=tricky, cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_streamed_stuffing_equals_whole_message_stuffing(message: bytes, cuts: list[int]) -> None:
    stuffer = DotStuffer()
    bounds = sorted({0, len(message), *(c for c in cuts if c <= len(message))})
    out = b"".join(stuffer.feed(message[a:b]) for a, b in itertools.pairwise(bounds))
    assert out + stuffer.end() == dot_stuff(message)


@settings(max_examples=50, deadline=None)
@given(message=tricky, chunk=st.integers(min_value=1, max_value=64))
def test_file_source_chunks_stuff_like_the_whole_message(
    tmp_path_factory: Any, message: bytes, chunk: int
) -> None:
    path = tmp_path_factory.mktemp("q") / "msg"
    # padded past SMALL so that the message is read from the file, chunk by chunk
    body = message + b"\r\n" + b"y" * SMALL + message
    path.write_bytes(queue_file.encode(ENV, body))
    env, source = open_queued(str(path))
    with source:
        assert source.data is None and env == ENV
        stuffer = DotStuffer()
        out = b"".join(stuffer.feed(c) for c in source.chunks(chunk * 1024)) + stuffer.end()
        assert out == dot_stuff(body)
        assert source.prefix(100) == body[:100]


def test_open_queued_refuses_incomplete_files_and_links(tmp_path: Path) -> None:
    body = b"Subject: x\r\n\r\n" + b"z" * (2 * SMALL)
    whole = queue_file.encode(ENV, body)
    cut = tmp_path / "cut"
    cut.write_bytes(whole[:-5])
    with pytest.raises(queue_file.FormatError, match="incomplete"):
        open_queued(str(cut))
    longer = tmp_path / "longer"
    longer.write_bytes(whole + b"more")
    with pytest.raises(queue_file.FormatError):
        open_queued(str(longer))
    good = tmp_path / "good"
    good.write_bytes(whole)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(queue_file.FormatError, match="symbolic link"):
        open_queued(str(link))
    _, source = open_queued(str(good))
    with source:
        source.scan()
        assert source.ascii and source.size == len(body)
    assert source.fd == -1  # closed


def _relay_cfg(relay: RelayStandin) -> dict[str, Any]:
    return relay.relay_settings() | {"timeout": 30, "data_timeout": 60}


def child_send(args: dict[str, Any]) -> None:
    """In a fresh process: relay one queue file, print memory figures (run by the test below)."""
    import tracemalloc

    async def send() -> tuple[str, str]:
        env, source = open_queued(args["path"])
        with source:
            source.scan()
            conn = RelayConnection(RelayConfig(**args["cfg"]), args["password"], "client.test")
            await conn.connect()
            tracemalloc.start()
            tx = await conn.send(env.sender, list(env.recipients), source)
            await conn.close()
        return tx.results[0].outcome, tx.results[0].reply

    before = _vm("VmHWM")
    outcome, reply = asyncio.run(send())
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"outcome": outcome, "reply": reply, "peak": peak, "hwm_growth": _vm("VmHWM") - before}))


def _vm(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _big_message(size: int) -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: big\r\n\r\n"
    # lines that start with dots, and 8-bit bytes, all the way through
    line = b".dotted line \xc3\xa9 " + b"0123456789" * 6 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


@pytest.mark.parametrize(
    ("pipelining", "size"), [(True, 25_000_000), (False, 4_000_000)], ids=["pipelined", "one-by-one"]
)
def test_big_message_streams_from_its_file(tmp_path: Path, pipelining: bool, size: int) -> None:
    message = _big_message(size)
    path = tmp_path / "msg"
    path.write_bytes(queue_file.encode(ENV, message))
    with RelayStandin(pipelining=pipelining) as relay:
        args = {"path": str(path), "cfg": _relay_cfg(relay), "password": relay.password}
        code = f"import json, sys; from tests.test_relay_stream import child_send; child_send({args!r})"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=100, check=False
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["outcome"] == "sent", result
        got = relay.wait_for(1)[0]
    assert got.data == message  # byte for byte, dots unstuffed again by the relay
    assert "BODY=8BITMIME" in got.mail_options and f"SIZE={len(message)}" in got.mail_options
    # a whole copy (let alone a stuffed second one) would be the message's size
    assert result["peak"] < 2_000_000, result
    assert result["hwm_growth"] < 8_000_000, result


def test_small_message_bytes_still_relay(tmp_path: Path) -> None:
    """The in-memory path (bytes, or a small queue file) sends one write with the final dot."""
    message = b"Subject: s\r\n\r\n.one\r\ntwo"  # no final CRLF: one is added before the dot
    path = tmp_path / "msg"
    path.write_bytes(queue_file.encode(ENV, message))

    async def send(relay: RelayStandin) -> str:
        env, source = open_queued(str(path))
        assert isinstance(source, MessageSource) and source.data == message
        conn = RelayConnection(RelayConfig(**_relay_cfg(relay)), relay.password, "client.test")
        await conn.connect()
        with source:
            tx = await conn.send(env.sender, list(env.recipients), source)
        await conn.close()
        return tx.results[0].outcome

    with RelayStandin() as relay:
        assert asyncio.run(send(relay)) == "sent"
        assert relay.wait_for(1)[0].data == message + b"\r\n"
        assert "BODY=8BITMIME" not in relay.messages[0].mail_options


def test_bounce_of_a_big_original_returns_its_headers_only() -> None:
    head = b"From: a@example.com\r\nSubject: big\r\n\r\n"
    original = head + b"body line\r\n" * 20_000
    report = bounce.build(
        qid="0123456789ABCDEF",
        sender="a@example.com",
        failed=[bounce.FailedRecipient("b@example.net", "550 5.1.1 no such user")],
        original=original[: bounce.SIZE_LIMIT],
        original_size=len(original),
        hostname="host.test",
        mailer_daemon="MAILER-DAEMON@host.test",
        relay="relay.test",
        arrival=1700000000.0,
        headers_only=False,  # RET=FULL asked for the whole message
    )
    assert b"Content-Type: text/rfc822-headers" in report and b"message/rfc822" not in report
    assert b"Subject: big\r\n" in report and b"body line" not in report
    assert f"The message was {len(original)} bytes".encode() in report
    assert len(report) < 5_000
    small = bounce.build(
        qid="0123456789ABCDEF",
        sender="a@example.com",
        failed=[bounce.FailedRecipient("b@example.net", "550 5.1.1 no such user")],
        original=original[:2000],
        hostname="host.test",
        mailer_daemon="MAILER-DAEMON@host.test",
        relay="relay.test",
        arrival=1700000000.0,
        headers_only=False,
    )
    assert b"Content-Type: message/rfc822" in small and original[:2000] in small


def test_daemon_bounces_a_big_message_with_its_headers_only(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    """Through the daemon: a 1 MB message refused with 550, RET=FULL, read from its file."""
    relay_standin.reject_rcpt("nobody@example.net")
    agent = AgentEnv(tmp_path, relay_standin)
    agent.queue_dir.joinpath("msg").mkdir(parents=True)
    big = b"From: app@example.com\r\nSubject: big one\r\n\r\n" + b"\xc3\xa9 body line\r\n" * 80_000
    env = queue_file.Envelope("app@example.com", ("nobody@example.net",), time.time(), (("ret", "FULL"),))
    agent.queue_dir.joinpath("msg", "1D00000000000001").write_bytes(queue_file.encode(env, big))
    agent.start()
    try:
        got = relay_standin.wait_for(1, timeout=20)
        assert [x["state"] for x in agent.queue_json()] == ["failed"]  # kept a while, as failed
    finally:
        agent.stop()
    report = got[0].data
    assert list(got[0].rcpt_tos) == ["app@example.com"] and got[0].mail_from == ""
    assert b"Content-Type: text/rfc822-headers" in report and b"Subject: big one\r\n" in report
    assert b"body line" not in report and f"The message was {len(big)} bytes".encode() in report
    assert len(report) < 20_000
