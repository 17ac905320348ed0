"""The send rate: aiolimiter on one host, or one rate shared by a fleet through Redis.

Elastx limits the relay account, not the host: a fleet of app servers sharing one
account must share one rate. `limits.shared` names a Redis; every agent reserves
the next free slot there (GCRA: one key holds the theoretical arrival time, slots
`1/rate` apart, Redis TIME as the one clock) and sleeps until its slot before MAIL
FROM. A slot is granted once, so any window of T seconds holds at most rate*T + 1
slots fleet-wide, +1 for the jitter between a slot and the MAIL FROM it paces.

While Redis cannot be reached each agent falls back to rate / fleet_size_hint on
its own aiolimiter, says so once, and asks Redis again after RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter

from agent.config import Config

log = logging.getLogger("relay-agent")

RETRY_SECONDS = 5.0
REDIS_TIMEOUT = 1.0

# KEYS[1]: the fleet's key; ARGV[1]: slot interval in microseconds. Returns how many
# microseconds the caller waits for the slot it was just given.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ttl_ms = math.floor((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl_ms)
return tat - now
"""


class Pacer(Protocol):
    async def acquire(self) -> None: ...


def local_limiter(rate: float) -> AsyncLimiter:
    """Even pacing (one token, refilled every 1/rate s), never AsyncLimiter(rate, 1): that bursts."""
    return AsyncLimiter(1, 1.0 / rate)


def make(cfg: Config) -> Pacer:
    if not cfg.limits.shared:
        return local_limiter(cfg.limits.rate)
    return SharedPacer(cfg.limits.shared, cfg.limits.rate, cfg.limits.fleet_size_hint, fleet_key(cfg))


def settings(cfg: Config) -> tuple[object, ...]:
    """What a pacer is made from: a reload that changes none of it keeps the pacer (and its pace)."""
    return (cfg.limits.rate, cfg.limits.shared, cfg.limits.fleet_size_hint, fleet_key(cfg))


_closing: set[asyncio.Task[None]] = set()


def retire(old: Pacer) -> None:
    """A reload replaced `old`: close its Redis connections (on the running loop)."""
    if isinstance(old, SharedPacer):
        task = asyncio.get_running_loop().create_task(old.client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


def fleet_key(cfg: Config) -> str:
    """One key per relay account: the limit Elastx enforces is the account's."""
    return f"relay-agent:rate:{cfg.relay.username or '-'}@{cfg.relay.host}:{cfg.relay.port}"


def shown(url: str) -> str:
    """The Redis URL for logs: scheme, host and port, never a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


class SharedPacer:
    def __init__(self, url: str, rate: float, fleet_size_hint: int, key: str) -> None:
        import redis.asyncio  # only agents that share a rate pay for importing it

        self.url = url
        self.key = key
        self.interval_us = max(1, round(1_000_000 / rate))
        self.fallback = local_limiter(rate / fleet_size_hint)
        self.client: Any = redis.asyncio.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.script: Any = self.client.register_script(GCRA)
        self.retry_at = 0.0
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)

    async def acquire(self) -> None:
        if time.monotonic() < self.retry_at:
            return await self.fallback.acquire()
        try:
            wait_us = int(await asyncio.wait_for(self.script(keys=[self.key], args=[self.interval_us]), 2.0))
        except self.errors as exc:
            if not self.retry_at:
                log.warning(
                    "limits.shared %s unreachable (%s); sending at rate / fleet_size_hint meanwhile",
                    shown(self.url),
                    type(exc).__name__,
                )
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return await self.fallback.acquire()
        if self.retry_at:
            log.info("limits.shared %s reachable again: back on the fleet's rate", shown(self.url))
            self.retry_at = 0.0
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
