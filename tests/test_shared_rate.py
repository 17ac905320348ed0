"""limits.shared: agents of one fleet share one rate through a real Redis; without Redis each
falls back to rate / fleet_size_hint. Rates are measured at the relay stand-in."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.queue import queue_file
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv, wait_until
from tests.support.redis_server import RedisServer, free_port
from tests.support.relay_standin import RelayStandin

BODY = b"From: app@example.com\r\nTo: t@example.net\r\nSubject: fleet\r\n\r\nbody\r\n"


def _fill(env: AgentEnv, n: int, tag: str) -> None:
    q = Queue(str(env.queue_dir))
    q.ensure_dirs()
    for i in range(n):
        q.enter(queue_file.Envelope("app@example.com", (f"{tag}{i}@example.net",), time.time()), BODY)


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def test_two_agents_share_one_rate(
    tmp_path: Path, relay_standin: RelayStandin, redis_server: RedisServer
) -> None:
    rate, n = 40.0, 80
    limits = {"shared": redis_server.url, "fleet_size_hint": 2}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    envs = [
        AgentEnv(tmp_path / name, relay_standin, rate=rate, extra={"limits": limits}) for name in ("a", "b")
    ]
    for env, name in zip(envs, ("a", "b"), strict=True):
        _fill(env, n, name)
    try:
        for env in envs:
            env.start()
        relay_standin.wait_for(2 * n, timeout=30)
    finally:
        for env in envs:
            env.stop()
    times = relay_standin.mail_from_times
    assert len(times) == 2 * n
    # each agent alone would send at `rate`: together they must not exceed it
    assert abs(_rate(times) - rate) <= 0.1 * rate, _rate(times)
    for window in (1.0, 1.5):
        assert _max_in_window(times, window) <= rate * window + 2
    for env in envs:
        assert "unreachable" not in env.log() and redis_server.password not in env.log()


def test_without_redis_each_agent_sends_rate_over_fleet_size(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    url = f"redis://:fleet-secret-123@127.0.0.1:{free_port()}/0"  # nothing listens there
    limits = {"shared": url, "fleet_size_hint": 2}
    env = AgentEnv(tmp_path, relay_standin, rate=40.0, extra={"limits": limits})
    _fill(env, 40, "solo")
    env.start()
    try:
        relay_standin.wait_for(40, timeout=30)
    finally:
        env.stop()
    assert abs(_rate(relay_standin.mail_from_times) - 20.0) <= 2.0, _rate(relay_standin.mail_from_times)
    log = env.log()
    assert log.count("unreachable") == 1 and "fleet-secret-123" not in log


def test_shared_must_be_a_redis_url_and_its_password_is_redacted(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    bad = AgentEnv(tmp_path / "bad", extra={"limits": {"shared": "http://10.0.0.5:6379"}})
    out = bad.cli("config", "check")
    assert out.returncode == 78 and "limits.shared" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    good = AgentEnv(tmp_path / "good", extra={"limits": {"shared": "redis://:hunter2pass@10.0.0.5:6379/0"}})
    out = good.cli("config", "check")
    assert out.returncode == 0, out.stderr
    assert "hunter2pass" not in out.stdout + out.stderr and "10.0.0.5:6379/0" in out.stdout


def test_pacer_import_stays_out_of_agents_that_do_not_share(tmp_path: Path) -> None:
    env = AgentEnv(tmp_path)
    code = (
        "import sys; from agent import config; from agent.delivery import pacer; "
        f"p = pacer.make(config.load({str(env.config)!r})); "
        "print(json.dumps([type(p).__name__, 'redis' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True)
    assert json.loads(out.stdout) == ["AsyncLimiter", False], out.stderr


def test_sighup_switches_to_the_shared_rate(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin, rate=40.0)
    env.start()
    try:
        env.sections["limits"].update(shared=f"redis://127.0.0.1:{free_port()}/0", fleet_size_hint=2)
        env.write_config()
        assert env.proc is not None
        env.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded config" in env.log())
        _fill(env, 40, "hup")
        assert env.cli("queue", "flush").returncode == 0
        relay_standin.wait_for(40, timeout=30)
    finally:
        env.stop()
    # Redis is unreachable, so the reloaded agent paces at 40 / 2, not at its old local 40
    assert abs(_rate(relay_standin.mail_from_times) - 20.0) <= 2.0, _rate(relay_standin.mail_from_times)
    assert env.log().count("unreachable") == 1


async def test_one_burst_seen_by_two_agents_halves_the_fleet_once(redis_server: RedisServer) -> None:
    from agent.delivery.pacer import SharedPacer

    a = SharedPacer(redis_server.url, 10.0, 1, "relay-agent:rate:burst@test:587", rate_ttl=60)
    b = SharedPacer(redis_server.url, 10.0, 1, "relay-agent:rate:burst@test:587", rate_ttl=60)
    try:
        await a._publish([repr(5.0), "down", repr(10.0), repr(10.0), 60_000])
        # b saw the same burst, after a's halving was stored: it must not halve the fleet again
        await b._publish([repr(2.5), "down", repr(5.0), repr(10.0), 60_000])
        assert a.fleet_rate == 5.0 and b.fleet_rate == 5.0
        await asyncio.sleep(0.25)  # one slot at 5 msg/s later: a new push-back halves again
        await b._publish([repr(2.5), "down", repr(5.0), repr(10.0), 60_000])
        assert b.fleet_rate == 2.5
        await a.acquire()
        assert a.fleet_rate == 2.5  # read with the slot
    finally:
        await a.client.aclose()
        await b.client.aclose()


async def test_without_redis_a_slowed_fleet_stays_slow() -> None:
    """Redis away: the fallback keeps to the effective rate the relay asked for, not only to
    rate / fleet_size_hint."""
    from agent.delivery.pacer import SharedPacer

    p = SharedPacer(f"redis://127.0.0.1:{free_port()}/0", 1000.0, 1, "relay-agent:rate:gone@test:587")
    try:
        p.fleet_rate = 20.0  # the relay pushed back: 20 msg/s for the fleet
        t0 = time.monotonic()
        for _ in range(6):
            await p.acquire()
        assert time.monotonic() - t0 >= 5 / 20.0 * 0.95  # 6 slots, 5 intervals of 50 ms
        assert p.retry_at > 0  # it did fall back
        p.fleet_rate = None
        t0 = time.monotonic()
        for _ in range(6):
            await p.acquire()
        assert time.monotonic() - t0 < 0.2  # back at rate / fleet_size_hint: 1 ms apart
    finally:
        await p.client.aclose()
