"""One lane per relay account: its pool of connections, its backoff and the messages parked on it,
and what a reload does to them (no relay involved: the connections are never opened here)."""

from __future__ import annotations

import dataclasses

from agent import config
from agent.config import Account
from agent.delivery.lanes import Lane

CFG = config.from_dict(
    {
        "relay": {"username": "ops@example.com"},
        "account": [{"name": "shop", "username": "mail@shop.example", "domains": ["shop.example"]}],
    }
)
SHOP = CFG.accounts[1]


def no_password(account: Account) -> str | None:
    return None


async def test_a_lane_lends_its_connections_and_parks_beyond_them() -> None:
    lane = Lane(CFG, SHOP, no_password)
    first, second = lane.take(0.0), lane.take(0.0)
    assert first is not None and second is not None and first is not second
    assert lane.take(0.0) is None  # both out: a third message waits in the lane
    lane.parked.append(7)
    assert lane.releasable(0.0) == 0  # nothing came back yet
    assert lane.give(first) is True
    assert lane.releasable(0.0) == 1 and lane.releasable(0.0) == 0  # once per kick
    assert lane.take(0.0) is first  # the connection just used goes again: fewer stay open


async def test_a_backoff_holds_the_lane_then_lets_parked_mail_go() -> None:
    lane = Lane(CFG, SHOP, no_password)
    lane.failed(100.0, 30.0, "auth failed at relay: 535 5.7.8 bad credentials")
    assert lane.take(110.0) is None
    lane.parked.extend([1, 2, 3])
    assert lane.waits_until() == 130.0
    assert lane.releasable(110.0) == 0
    assert lane.releasable(130.0) == 2  # as many as there are connections: the probes
    assert lane.connect_backoff == 0.0 and lane.take(130.0) is not None
    assert lane.status.last_relay_error == "auth failed at relay: 535 5.7.8 bad credentials"


async def test_a_reload_to_another_relay_drops_the_old_connections() -> None:
    lane = Lane(CFG, SHOP, no_password)
    out = lane.take(0.0)
    assert out is not None
    moved = dataclasses.replace(SHOP, relay=dataclasses.replace(SHOP.relay, port=2525))
    lane.reconfigure(CFG, moved)
    assert lane.give(out) is False  # made for the old relay: closed, a new one in its place
    assert len(lane.idle) == 2 and out not in lane.idle


async def test_a_reload_with_fewer_connections_and_a_retired_lane() -> None:
    lane = Lane(CFG, SHOP, no_password)
    out = lane.take(0.0)
    assert out is not None
    lane.reconfigure(CFG, dataclasses.replace(SHOP, connections=1, rate=2.0))
    assert lane.idle == [] and lane.give(out) is True and len(lane.idle) == 1
    assert lane.status.rate == 2.0 and lane.status.effective_rate == 2.0
    lane.parked.extend([5, 6])
    assert lane.retire() == [5, 6] and lane.idle == []
    assert lane.take(0.0) is None
