"""Pacing that listens, end to end: the real daemon against a relay stand-in that answers
`421 4.7.0` to MAIL FROM beyond N a second. The agent's pace is measured at the stand-in."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

from agent import config
from agent.delivery import decisions, pacer
from agent.delivery.decisions import Disposition
from agent.delivery.lanes import Lane
from agent.queue import queue_file, state_file
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv, wait_until
from tests.support.redis_server import RedisServer
from tests.support.relay_standin import RelayStandin
from tests.test_daemon import free_port
from tests.test_metrics import samples

BODY = b"From: app@example.com\r\nTo: t@example.net\r\nSubject: pace\r\n\r\nbody\r\n"
RATE, LIMIT = 16.0, 4
ADAPTIVE = {"min_rate": 1.0, "recover_after": 2.0, "connections": 2}
CHANGE = re.compile(r"rate for account default: ([\d.]+) -> ([\d.]+) msg/s \((.*)\)")


def _fill(env: AgentEnv, n: int, tag: str, sender: str = "app@example.com") -> None:
    q = Queue(str(env.queue_dir))
    q.ensure_dirs()
    for i in range(n):
        q.enter(queue_file.Envelope(sender, (f"{tag}{i}@example.net",), time.time()), BODY)


def _rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def _changes(log: str) -> list[tuple[float, float, str]]:
    return [(float(a), float(b), why) for a, b, why in CHANGE.findall(log)]


def _status(env: AgentEnv) -> dict[str, Any]:
    out = env.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["accounts"][0])


def _delivered_once(relay: RelayStandin, count: int) -> None:
    rcpts = [r for m in relay.messages for r in m.rcpt_tos]
    assert len(rcpts) == count and len(set(rcpts)) == count


def test_a_push_back_is_no_failure_of_the_recipients() -> None:
    env = queue_file.Envelope("app@example.com", ("a@example.net", "b@example.net"), 1000.0)
    reply = "mail failed at relay: 421 4.7.0 Too many messages"
    results = decisions.for_pending(state_file.State(), env, "temp", reply)
    settings = config.from_dict({}).queue
    pushed = decisions.outcome(state_file.State(), env, results, 1010.0, settings, 0.0, pushed_back=True)
    plain = decisions.outcome(state_file.State(), env, results, 1010.0, settings, 0.0)
    assert pushed.disposition is Disposition.DEFERRED and pushed.due == 1010.0  # the next free slot
    assert pushed.state.attempts == 0 and pushed.state.last_error == reply and not pushed.state.bounce_due
    assert plain.state.attempts == 1 and plain.due >= 1010.0 + settings.retry_initial / 2


async def test_a_lane_halves_on_push_back_only_when_every_temporary_reply_is_one() -> None:
    cfg = config.from_dict({"limits": {"rate": 16.0, "min_rate": 1.0}})
    lane = Lane(cfg, cfg.default_account, lambda account: None)
    assert lane.answered(0.0, ["451 4.3.0 local problem"]) == (0, False)
    assert lane.answered(0.0, ["421 4.7.0 slow down", "450 4.2.1 mailbox busy"]) == (1, False)
    assert lane.status.effective_rate == 8.0  # halved all the same: the relay asked for it
    assert lane.answered(0.01, ["452 4.7.1 too many"]) == (1, True)
    assert lane.status.effective_rate == 8.0  # once per slot: the same burst
    off = Lane(config.from_dict({"limits": {"adaptive": False}}), cfg.default_account, lambda a: None)
    assert off.answered(0.0, ["421 4.7.0 slow down"]) == (1, False) and off.adaptive is None
    await lane.close()


async def test_the_spaced_pacer_stays_even_below_the_configured_rate() -> None:
    spaced = pacer.Spaced(pacer.local_limiter(100.0))
    spaced.slow_to(20.0)
    stamps = []
    for _ in range(6):
        await spaced.acquire()
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.045 <= g <= 0.08 for g in gaps), gaps


def test_push_back_slows_the_pace_then_it_recovers(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay, n = relay_standin, 40
    relay.push_back(LIMIT)
    port = free_port()
    extra = {"limits": ADAPTIVE, "metrics": {"listen": f"127.0.0.1:{port}"}}
    env = AgentEnv(tmp_path, relay, rate=RATE, extra=extra)
    _fill(env, n, "p")
    env.start()
    try:
        relay.wait_for(n, timeout=40)
        env.wait_queue_empty(5)
        pushed = len(relay.pushback_times)
        tries = relay.mail_from_times
        slowest = _status(env)["effective_rate"]
        got = samples(port)
        assert got[("relay_agent_pushback_total", (("account", "default"),))] == pushed
        assert got[("relay_agent_rate_effective", (("account", "default"),))] < RATE
        relay.push_back(None)  # the relay's quota is lifted: the rate climbs back, step by step
        wait_until(lambda: _changes(env.log())[-1][1] == RATE, timeout=20)
        assert _status(env)["effective_rate"] == RATE
        relay.clear()
        _fill(env, 32, "r")
        env.cli("queue", "flush")
        relay.wait_for(32, timeout=10)
        assert samples(port)[("relay_agent_rate_effective", (("account", "default"),))] == RATE
    finally:
        env.stop()
    start = min(tries)
    settled = [t for t in tries if t >= start + 3.0]  # after a few seconds
    assert _rate(settled) <= LIMIT * 1.25, _rate(settled)
    # a few 421s, not one per message: the first halvings (one per slot, on each of 2 connections),
    # then one per recovery step that overshoots the relay's limit
    steps = (max(tries) - start) / ADAPTIVE["recover_after"]
    assert pushed <= 2 * 3 + 2 + steps, (pushed, steps)
    assert abs(_rate(relay.mail_from_times) - RATE) <= 0.15 * RATE  # back at the configured rate
    assert slowest < RATE
    log = env.log()
    assert "status=bounced" not in log and "status=deferred" in log
    changes = _changes(log)
    assert changes[0][:2] == (RATE, RATE / 2) and changes[0][2].startswith("relay pushed back: 421 4.7.0")
    assert [c for c in changes if c[2] == "recovering"][-1][1] == RATE
    assert all(b - a == RATE / 4 or b == RATE for a, b, why in changes if why == "recovering")


def test_adaptive_off_keeps_the_rate(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay, n = relay_standin, 24
    relay.push_back(LIMIT)
    env = AgentEnv(tmp_path, relay, rate=RATE, extra={"limits": ADAPTIVE | {"adaptive": False}})
    _fill(env, n, "o")
    env.start()
    try:
        relay.wait_for(n, timeout=30)
        env.wait_queue_empty(5)
        assert _status(env)["effective_rate"] == RATE
    finally:
        env.stop()
    _delivered_once(relay, n)
    log = env.log()
    assert not _changes(log) and "status=bounced" not in log
    # the 421s were ordinary deferrals: each one backs the relay off as in Part 1, nothing slower after
    assert len(relay.pushback_times) >= 2 and "status=deferred (mail failed" in log


def test_a_fleet_slows_down_together(
    tmp_path: Path, relay_standin: RelayStandin, redis_server: RedisServer
) -> None:
    """The stand-in pushes back only at agent a's mail; agent b slows down through Redis."""
    relay, n = relay_standin, 24
    relay.push_back(LIMIT, senders=("a@example.com",))
    limits = ADAPTIVE | {"shared": redis_server.url, "fleet_size_hint": 2}
    envs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        envs.append(AgentEnv(tmp_path / name, relay, rate=RATE, extra={"limits": limits}))
        _fill(envs[-1], n, name, sender=f"{name}@example.com")
    try:
        for env in envs:
            env.start()
        relay.wait_for(2 * n, timeout=40)
    finally:
        for env in envs:
            env.stop()
    _delivered_once(relay, 2 * n)
    times = {name: [m.time for m in relay.messages if m.mail_from == f"{name}@example.com"] for name in "ab"}
    start = min(times["a"] + times["b"])
    b_late = [t for t in times["b"] if t >= start + 2.0]
    # b alone would go on at the configured rate: it follows the fleet's slower pace instead
    assert len(b_late) < 2 or _rate(b_late) <= RATE / 2, _rate(b_late)
    assert _changes(envs[0].log())[0][2].startswith("relay pushed back")
    followed = [(a, b) for a, b, why in _changes(envs[1].log()) if "limits.shared" in why]
    assert any(b < a for a, b in followed) and any(b > a for a, b in followed)  # down, and back up
    for env in envs:
        assert "status=bounced" not in env.log()
