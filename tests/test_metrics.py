"""/metrics, /healthz and /readyz of a real daemon, read with prometheus-client's own parser.

The queue gauges are checked against a queue whose content the test knows (messages deferred while
the relay is down, one of them held), /readyz goes 503 once mail waited past queue.retry_max with
the relay down and 200 after the relay takes it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.status.health import stalled, unready
from tests.support.agent_env import AgentEnv, wait_until
from tests.support.relay_standin import RelayStandin
from tests.test_daemon import free_port

MSG = b"From: app@example.com\nTo: ops@example.net\nSubject: metrics\n\nbody\n"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value, as prometheus-client parses the page."""
    out = {}
    for family in text_string_to_metric_families(get(port, "/metrics")[1]):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def queue_gauge(port: int) -> dict[str, float]:
    got = samples(port)
    return {
        state: got[("relay_agent_queue_messages", (("state", state),))]
        for state in ("queued", "deferred", "held", "failed")
    }


def test_metrics_health_and_readiness(tmp_path: Path, relay_standin: RelayStandin) -> None:
    port = free_port()
    extra: dict[str, dict[str, Any]] = {
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "queue": {"retry_initial": 1, "retry_max": 2},
    }
    env = AgentEnv(tmp_path, relay_standin, extra=extra)
    relay_standin.down()
    env.start()
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert queue_gauge(port) == {"queued": 0.0, "deferred": 0.0, "held": 0.0, "failed": 0.0}
        got = samples(port)
        assert got[("relay_agent_queue_oldest_seconds", ())] == 0.0
        assert got[("relay_agent_messages_total", (("account", "default"), ("outcome", "held")))] == 0.0
        assert got[("relay_agent_rate_effective", (("account", "default"),))] == 500.0
        assert any(name == "process_resident_memory_bytes" for name, _ in got)
        for i in range(3):
            assert env.sendmail(["-i", f"m{i}@example.net"], MSG).returncode == 0
        wait_until(lambda: [x["state"] for x in env.queue_json()] == ["deferred"] * 3, timeout=15)
        held = env.queue_json()[0]["id"]
        assert env.cli("queue", "hold", held).returncode == 0
        wait_until(
            lambda: queue_gauge(port) == {"queued": 0.0, "deferred": 2.0, "held": 1.0, "failed": 0.0}, 15
        )
        assert samples(port)[("relay_agent_queue_oldest_seconds", ())] > 0
        wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=15)
        _, why = get(port, "/readyz")
        assert why.startswith("account default: mail waiting") and "never since start" in why, why
        relay_standin.up()
        assert env.cli("queue", "flush").returncode == 0
        relay_standin.wait_for(2)
        wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15)
        wait_until(
            lambda: queue_gauge(port) == {"queued": 0.0, "deferred": 0.0, "held": 1.0, "failed": 0.0}, 15
        )
        got = samples(port)
        assert got[("relay_agent_messages_total", (("account", "default"), ("outcome", "sent")))] == 2.0
        assert got[("relay_agent_messages_total", (("account", "default"), ("outcome", "queued")))] == 3.0
        assert get(port, "/nowhere")[0] == 404
    finally:
        env.stop()


def test_readiness_rules() -> None:
    assert unready(100.0, False, {}, {}, 60) == "listeners not up yet"
    assert unready(100.0, True, {}, {}, 60) is None  # nothing due
    assert unready(100.0, True, {"a": 30.0}, {}, 60) is None  # due, but not waiting long yet
    assert "account a: mail waiting 90s" in str(unready(100.0, True, {"a": 90.0}, {}, 60))
    assert unready(100.0, True, {"a": 90.0}, {"a": 50.0}, 60) is None  # the relay took mail 50 s ago
    assert "last accepted 70s ago" in str(unready(100.0, True, {"a": 90.0}, {"a": 30.0}, 60))
    assert unready(100.0, True, {"a": 90.0, "b": 10.0}, {"a": 95.0}, 60) is None
    assert stalled(100.0, 95.0) is None and "silent for 15s" in str(stalled(110.0, 95.0))


def test_a_stalled_loop_fails_healthz_within_the_stall_limit() -> None:
    from agent.status.health import STALL, Health

    h = Health(retry_max=60, listening=True)
    h.heartbeat = time.monotonic() - STALL - 1
    assert h.alive() is not None
    h.beat()
    assert h.alive() is None and h.ready() is None
