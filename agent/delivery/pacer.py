"""The send rate: aiolimiter on one host, or one rate shared by a fleet through Redis.

Elastx limits the relay account, not the host: a fleet of app servers sharing one
account must share one rate. `limits.shared` names a Redis; every agent reserves
the next free slot there (GCRA: one key holds the theoretical arrival time, slots
`1/rate` apart, Redis TIME as the one clock) and sleeps until its slot before MAIL
FROM. A slot is granted once, so any window of T seconds holds at most rate*T + 1
slots fleet-wide, +1 for the jitter between a slot and the MAIL FROM it paces.

While Redis cannot be reached each agent falls back to rate / fleet_size_hint on
its own aiolimiter, says so once, and asks Redis again after RETRY_SECONDS.

When the relay pushes back, the account's effective rate drops below the configured one: one
agent keeps the configured rate's limiter and spaces its slots 1 / effective apart on top of it
(Spaced); a fleet stores the effective rate in Redis beside the slot key, and every slot reads
it, so one agent's push-back slows the whole fleet from its next slot on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter

from agent.config import Account, Config, RelayConfig

log = logging.getLogger("relay-agent")

RETRY_SECONDS = 5.0
REDIS_TIMEOUT = 1.0
RATE_TTL = 180.0  # a fleet slow-down nobody renews (its agent went away) ends after this
RATE_TTL_MIN = 10.0

# KEYS[1]: the fleet's key; KEYS[2]: the fleet's effective rate while the relay has slowed it
# (absent otherwise); ARGV[1]: the configured rate's slot interval in microseconds. Returns how
# many microseconds the caller waits for the slot it was just given, and the effective rate
# stored ("" when none).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slowed = redis.call('GET', KEYS[2])
if slowed and tonumber(slowed) and tonumber(slowed) > 0 then
  local slow = math.floor(1000000 / tonumber(slowed))
  if slow > interval then interval = slow end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ttl_ms = math.floor((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl_ms)
return {tat - now, slowed or ''}
"""

# KEYS[1]: the fleet's effective rate; KEYS[2]: when (Redis TIME, microseconds) the fleet last
# halved; ARGV: the new rate, "down" or "up", the rate this agent stored before, the configured
# rate, the keys' lifetime in ms. Down: stored unless the fleet is slower already or halved less
# than one of its (slowed) slots ago: one burst seen by several agents halves the fleet once.
# Up (recovering): stored unless another agent slowed the fleet further meanwhile or the fleet is
# back at the configured rate; back there the key goes. The lifetime ends a slow-down whose agent
# went away. Returns the effective rate stored now ("" when none).
SET_RATE = """
local stored = tonumber(redis.call('GET', KEYS[1]) or '')
local new = tonumber(ARGV[1])
if ARGV[2] == 'up' and not stored then return '' end
if stored and ((ARGV[2] == 'down' and stored <= new) or (ARGV[2] == 'up' and stored < tonumber(ARGV[3]))) then
  return redis.call('GET', KEYS[1])
end
if ARGV[2] == 'down' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local halved = tonumber(redis.call('GET', KEYS[2]) or '0')
  if stored and now - halved < 1000000 / stored then return redis.call('GET', KEYS[1]) end
  redis.call('SET', KEYS[2], string.format('%d', now), 'PX', ARGV[5])
end
if new >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  return ''
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
return ARGV[1]
"""


class Pacer(Protocol):
    async def acquire(self) -> None: ...


def local_limiter(rate: float) -> AsyncLimiter:
    """Even pacing (one token, refilled every 1/rate s), never AsyncLimiter(rate, 1): that bursts."""
    return AsyncLimiter(1, 1.0 / rate)


def make(cfg: Config, account: Account | None = None) -> Pacer:
    """The pacer of one relay account (default: [relay]'s), at that account's own rate."""
    account = account or cfg.default_account
    if not cfg.limits.shared:
        return local_limiter(account.rate)
    ttl = max(RATE_TTL_MIN, 3 * cfg.limits.recover_after)  # renewed by every step of the recovery
    key = fleet_key(account.relay)
    return SharedPacer(cfg.limits.shared, account.rate, cfg.limits.fleet_size_hint, key, ttl)


def settings(cfg: Config, account: Account | None = None) -> tuple[object, ...]:
    """What a pacer is made from: a reload that changes none of it keeps the pacer (and its pace)."""
    account = account or cfg.default_account
    return (account.rate, cfg.limits.shared, cfg.limits.fleet_size_hint, fleet_key(account.relay))


_closing: set[asyncio.Task[None]] = set()


def retire(old: Pacer) -> None:
    """A reload replaced `old`: close its Redis connections (on the running loop)."""
    if isinstance(old, Spaced):
        old = old.inner
    if isinstance(old, SharedPacer):
        task = asyncio.get_running_loop().create_task(old.client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


def fleet_key(relay: RelayConfig) -> str:
    """One key per relay account (its username at its relay): the limit Elastx enforces is the
    account's, whatever each host of the fleet calls it."""
    return f"relay-agent:rate:{relay.username or '-'}@{relay.host}:{relay.port}"


def shown(url: str) -> str:
    """The Redis URL for logs: scheme, host and port, never a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


class Spaced:
    """One agent's pacer: the configured rate's limiter, and while the relay has slowed the account
    down, slots at least 1 / effective apart on top of it (the limiter alone lets the configured
    rate through). A slot is reserved before the wait, so parallel connections stay evenly spaced."""

    def __init__(self, inner: Pacer) -> None:
        self.inner = inner
        self.interval = 0.0  # 0: the configured rate, the limiter alone
        self._last = -1e18  # the last slot given (time.monotonic)

    def slow_to(self, rate: float | None) -> None:
        """The effective rate now; None: back to the configured rate."""
        self.interval = 1.0 / rate if rate else 0.0

    async def acquire(self) -> None:
        if self.interval:
            now = time.monotonic()
            slot = max(now, self._last + self.interval)
            self._last = slot
            if slot > now:
                await asyncio.sleep(slot - now)
            await self.inner.acquire()
        else:
            await self.inner.acquire()
            self._last = time.monotonic()


class SharedPacer:
    def __init__(
        self, url: str, rate: float, fleet_size_hint: int, key: str, rate_ttl: float = RATE_TTL
    ) -> None:
        import redis.asyncio  # only agents that share a rate pay for importing it

        self.url = url
        self.key = key
        self.rate_key = key + ":effective"
        self.halved_key = key + ":halved"
        self.rate = rate
        self.rate_ttl_ms = max(1000, round(rate_ttl * 1000))
        self.fleet_rate: float | None = None  # the fleet's effective rate seen at the last slot
        self.interval_us = max(1, round(1_000_000 / rate))
        self.fallback = local_limiter(rate / fleet_size_hint)
        self.client: Any = redis.asyncio.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.script: Any = self.client.register_script(GCRA)
        self.set_rate: Any = self.client.register_script(SET_RATE)
        self.retry_at = 0.0
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._fallback_last = -1e18  # the last slot the fallback gave (time.monotonic)

    async def _fallback(self) -> None:
        """Redis away: rate / fleet_size_hint, and no faster than the fleet's effective rate last
        seen (or this agent's own push-back since): the relay asked the account to slow down."""
        await self.fallback.acquire()
        if self.fleet_rate:
            now = time.monotonic()
            slot = max(now, self._fallback_last + 1.0 / self.fleet_rate)
            self._fallback_last = slot
            if slot > now:
                await asyncio.sleep(slot - now)

    async def acquire(self) -> None:
        if time.monotonic() < self.retry_at:
            return await self._fallback()
        try:
            keys = [self.key, self.rate_key]
            wait, slowed = await asyncio.wait_for(self.script(keys=keys, args=[self.interval_us]), 2.0)
            wait_us = int(wait)
        except self.errors as exc:
            if not self.retry_at:
                log.warning(
                    "limits.shared %s unreachable (%s); sending at rate / fleet_size_hint meanwhile",
                    shown(self.url),
                    type(exc).__name__,
                )
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return await self._fallback()
        if self.retry_at:
            log.info("limits.shared %s reachable again: back on the fleet's rate", shown(self.url))
            self.retry_at = 0.0
        self.fleet_rate = _rate_or_none(slowed)
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)

    def publish(self, rate: float, direction: str, before: float) -> None:
        """Store this agent's new effective rate for the fleet ("down" after push-back, "up" when
        recovering), on the running loop, without waiting; fleet_rate follows what Redis keeps."""
        args = [repr(rate), direction, repr(before), repr(self.rate), self.rate_ttl_ms]
        if direction == "up" or self.fleet_rate is None or rate < self.fleet_rate:
            self.fleet_rate = rate if rate < self.rate else None  # what Redis will most likely keep
        task = asyncio.get_running_loop().create_task(self._publish(args))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _publish(self, args: list[object]) -> None:
        try:
            keys = [self.rate_key, self.halved_key]
            stored = await asyncio.wait_for(self.set_rate(keys=keys, args=args), 2.0)
        except self.errors:
            return  # Redis away: acquire() says so and falls back; the next change tries again
        self.fleet_rate = _rate_or_none(stored)


def _rate_or_none(raw: object) -> float | None:
    """A stored effective rate from Redis (bytes), None when there is none or it is not a rate."""
    try:
        rate = float(raw) if isinstance(raw, (bytes, str)) and raw else 0.0
    except ValueError:
        return None
    return rate if rate > 0 else None
