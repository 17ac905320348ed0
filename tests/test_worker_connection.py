"""A delivery worker's own relay connection against the real relay stand-in: opened when first
needed, reused, reopened once when the relay had closed it while idle."""

from __future__ import annotations

import asyncio

import pytest

from agent.config import RelayConfig
from agent.delivery.worker_connection import WorkerConnection
from agent.queue.message_source import MessageSource
from agent.queue.queue_file import Envelope
from agent.relay.connection import RelayConnection, RelayError
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(60)

ENV = Envelope("a@example.com", ("b@example.net",), 1_700_000_000.0)
MSG = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n\r\nHello.\r\n"


async def no_wait() -> None:
    pass


def worker_connection(relay: RelayStandin) -> WorkerConnection:
    cfg = RelayConfig(**relay.relay_settings())
    return WorkerConnection(lambda: RelayConnection(cfg, relay.password, "client.test"))


async def test_reused_then_reopened_once_after_an_idle_cut() -> None:
    with RelayStandin() as relay:
        link = worker_connection(relay)
        slots: list[int] = []

        async def before_mail() -> None:
            slots.append(1)

        try:
            for _ in range(3):
                tx = await link.send(ENV, ["b@example.net"], MessageSource.from_bytes(MSG), before_mail)
                assert [r.outcome for r in tx.results] == ["sent"]
            assert relay.connections == 1
            relay.down()  # cuts the idle connection
            relay.up()
            await asyncio.sleep(0.1)
            tx = await link.send(ENV, ["b@example.net"], MessageSource.from_bytes(MSG), before_mail)
            assert [r.outcome for r in tx.results] == ["sent"]
            assert relay.connections == 2 and len(relay.messages) == 4
            assert len(slots) == 4  # the cut connection took no send slot
        finally:
            await link.close()


async def test_a_relay_that_is_down_is_a_connect_error() -> None:
    with RelayStandin() as relay:
        link = worker_connection(relay)
        relay.down()
        with pytest.raises(RelayError) as err:
            await link.send(ENV, ["b@example.net"], MessageSource.from_bytes(MSG), no_wait)
        assert err.value.stage == "connect"
        relay.up()
        tx = await link.send(ENV, ["b@example.net"], MessageSource.from_bytes(MSG), no_wait)
        assert [r.outcome for r in tx.results] == ["sent"]
        await link.close()
