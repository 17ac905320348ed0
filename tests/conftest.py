from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_env import AgentEnv
from tests.support.redis_server import redis_server
from tests.support.relay_standin import RelayStandin, relay_standin, relay_standin_factory

__all__ = ["agent", "redis_server", "relay_standin", "relay_standin_factory"]


@pytest.fixture
def agent(tmp_path: Path, relay_standin: RelayStandin) -> Iterator[AgentEnv]:
    """A whole installation pointed at the relay stand-in; the daemon is stopped at the end."""
    env = AgentEnv(tmp_path, relay_standin)
    yield env
    if env.proc is not None:
        env.stop()
