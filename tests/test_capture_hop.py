"""The capture hop itself: a worker connection in capture mode never opens a socket, writes what a relay
would have received, streams a big message from its queue file without holding it, and turns a
Maildir it cannot write into a RelayError (deferred, never lost)."""

from __future__ import annotations

import mailbox
import os
import tracemalloc
from pathlib import Path

import pytest

from agent import durable
from agent.config import RelayConfig
from agent.delivery.worker_connection import WorkerConnection, last_hop
from agent.queue import queue_file
from agent.queue.message_source import MessageSource, open_queued
from agent.queue.queue_file import Envelope
from agent.relay.capture import CaptureConnection, prepended
from agent.relay.connection import RelayError
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(60)

MSG = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n\r\n.dot first\r\nHello.\r\n"


async def no_wait() -> None:
    pass


def queued(tmp: Path, env: Envelope, message: bytes) -> str:
    path = str(tmp / "queued")
    durable.write(path, queue_file.encode(env, message))
    return path


async def test_worker_connection_in_capture_mode_never_connects(tmp_path: Path) -> None:
    slots: list[int] = []

    async def before_mail() -> None:
        slots.append(1)

    with RelayStandin() as relay:
        cfg = RelayConfig(**relay.relay_settings(), mode="capture", capture_dir=str(tmp_path / "md"))
        link = WorkerConnection(lambda: last_hop(cfg, relay.password, "client.test"))
        env = Envelope("a@example.com", ("b@example.net", "c@example.net"), 1.0, account="shop")
        try:
            _, source = open_queued(queued(tmp_path, env, MSG))
            with source:
                tx = await link.send(env, ["b@example.net", "c@example.net"], source, before_mail)
            tx2 = await link.send(
                Envelope("", ("d@example.net",), 1.0), ["d@example.net"], source, before_mail
            )
        finally:
            await link.close()
        assert relay.connections == 0
    assert tx.relay == "capture" and [r.outcome for r in tx.results] == ["sent", "sent"]
    name = tx.results[0].reply.removeprefix("captured: ")
    assert tx.results[0].reply == f"captured: {name}" and tx.results[1].reply == tx.results[0].reply
    assert len(slots) == 2  # paced like a transaction
    box = mailbox.Maildir(str(tmp_path / "md"), create=False)
    assert box.get_bytes(name) == (
        b"Return-Path: <a@example.com>\r\nX-Relay-Agent-Account: shop\r\n"
        b"X-Original-To: <b@example.net>\r\nX-Original-To: <c@example.net>\r\n" + MSG
    )
    other = tx2.results[0].reply.removeprefix("captured: ")
    assert box.get_bytes(other).startswith(
        b"Return-Path: <>\r\nX-Relay-Agent-Account: default\r\nX-Original-To: <d@example.net>\r\nFrom:"
    )
    assert sorted(os.listdir(tmp_path / "md" / "new")) == sorted([name, other])


def test_relay_mode_still_makes_a_relay_connection() -> None:
    hop = last_hop(RelayConfig(host="127.0.0.1", port=1), None, "client.test")
    assert not isinstance(hop, CaptureConnection)


async def test_big_message_is_streamed_not_held(tmp_path: Path) -> None:
    line = b"x" * 998 + b"\r\n"
    message = b"From: a@example.com\r\nSubject: big\r\n\r\n" + line * 8000  # 8 MB
    env = Envelope("a@example.com", ("b@example.net",), 1.0)
    env_, source = open_queued(queued(tmp_path, env, message))
    assert source.data is None  # big: read from the file, not into memory
    size = len(prepended(env.sender, "default", env.recipients)) + len(message)
    del message
    hop = CaptureConnection(str(tmp_path / "md"))
    with source:
        tracemalloc.start()
        try:
            tx = await hop.send(env_.sender, ["b@example.net"], source, None, no_wait)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 1_000_000, peak  # a few 64 KiB chunks, never the 8 MB message
    name = tx.results[0].reply.removeprefix("captured: ")
    path = tmp_path / "md" / "new" / name
    assert path.stat().st_size == size
    with open(path, "rb") as fh:
        fh.seek(-2000, os.SEEK_END)
        assert fh.read() == line * 2


async def test_unwritable_maildir_is_a_relay_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    hop = CaptureConnection(str(tmp_path / "file" / "md"))
    with pytest.raises(RelayError) as err:
        await hop.send("a@example.com", ["b@example.net"], MSG, None, no_wait)
    assert err.value.stage == "capture" and err.value.relay == "capture"
    assert str(err.value).startswith(f"cannot capture into {tmp_path}/file/md: Not a directory")
    assert not os.path.exists(tmp_path / "file" / "md")


async def test_a_reload_back_to_relay_mode_applies_to_the_next_message(tmp_path: Path) -> None:
    with RelayStandin() as relay:
        relay_cfg = RelayConfig(**relay.relay_settings())
        current = [RelayConfig(**relay.relay_settings(), mode="capture", capture_dir=str(tmp_path / "md"))]
        link = WorkerConnection(lambda: last_hop(current[0], relay.password, "client.test"))
        env = Envelope("a@example.com", ("b@example.net",), 1.0)
        try:
            tx = await link.send(env, ["b@example.net"], MessageSource.from_bytes(MSG), no_wait)
            assert tx.relay == "capture" and relay.connections == 0
            current[0] = relay_cfg  # what a reload to mode = "relay" gives the factory
            tx = await link.send(env, ["b@example.net"], MessageSource.from_bytes(MSG), no_wait)
        finally:
            await link.close()
        assert tx.relay != "capture" and [r.outcome for r in tx.results] == ["sent"]
        assert relay.connections == 1 and len(relay.messages) == 1
