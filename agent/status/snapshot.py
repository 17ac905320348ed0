"""status.json: the running daemon's counters and relay status, in the queue directory.

The daemon rewrites it (atomically, through agent.durable) whenever its counters change, at
most ten times a second, and every few seconds anyway; `status`, `mailq` and `queue list`
read it. It is advisory: a missing, garbled or stale file reads as "nothing known", and
it is not fsynced (a crash loses only counters the next daemon starts afresh).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from agent import durable

if TYPE_CHECKING:  # the readers (mailq, `queue list`) need neither, nor asyncio
    import asyncio
    from collections.abc import Awaitable, Callable

    from agent.status.counters import Counters

    Runner = Callable[..., Awaitable[None]]  # the disk thread's run(fn, *args)
    Domains = Callable[[], list[dict[str, Any]]]

NAME = "status.json"
MIN_INTERVAL = 0.1  # at most ten rewrites a second under load
IDLE_REWRITE = 5.0  # rewritten this often without a change, so `updated` says the daemon lives


def path_in(queue_path: str) -> str:
    return os.path.join(queue_path, NAME)


def snapshot(counters: Counters, domains: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`domains`: the sender-domain watch's last verdict per domain (empty while it is off)."""
    c = counters
    return {
        "pid": os.getpid(),
        "updated": time.time(),
        "counters": {"queued": c.queued, "sent": c.sent, "deferred": c.deferred, "bounced": c.bounced},
        "last_relay_error": c.last_relay_error,
        "relay_suspended": c.relay_suspended,
        "accounts": [a.as_json() | {"suspended": a.suspended} for a in c.accounts.values()],
        "domains": domains or [],
    }


def write(path: str, counters: Counters, domains: list[dict[str, Any]] | None = None) -> None:
    """Replace status.json at `path` with the counters now (0600, the queue's owner reads it)."""
    durable.write(path, json.dumps(snapshot(counters, domains)).encode(), mode=0o600, sync=False)


async def loop(
    path: str, counters: Counters, run: Runner, stop: asyncio.Event, domains: Domains | None = None
) -> None:
    """Rewrite status.json through `run` (the disk thread's) after each change of `counters`, until `stop`."""
    import asyncio

    while not stop.is_set():
        counters.changed.clear()
        await run(write, path, counters, domains() if domains else None)
        changed = asyncio.ensure_future(counters.changed.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((changed, stopping), timeout=IDLE_REWRITE, return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        stopping.cancel()
        await asyncio.sleep(MIN_INTERVAL)


def read(queue_path: str) -> dict[str, Any]:
    """What the daemon last wrote; {} when there is no file, or it cannot be read or parsed."""
    try:
        with open(path_in(queue_path), "rb") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def counts(saved: dict[str, Any]) -> dict[str, int]:
    """The since-start counters `status` shows, from what read() gave (0 where it has none)."""
    counters = saved.get("counters")
    counters = counters if isinstance(counters, dict) else {}
    return {k: v if isinstance(v := counters.get(k), int) else 0 for k in ("sent", "deferred", "bounced")}


def domain_verdicts(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The sender-domain watch's verdicts from what read() gave ([] when it has none)."""
    shown = saved.get("domains")
    return [d for d in shown if isinstance(d, dict)] if isinstance(shown, list) else []


def suspended(saved: dict[str, Any]) -> str | None:
    """The daemon's reason for holding back delivery (the relay is unreachable), from what read()
    gave; None when it delivers, or when the daemon that wrote the file is gone."""
    reason = saved.get("relay_suspended")
    return reason if isinstance(reason, str) and _alive(saved) else None


def _alive(saved: dict[str, Any]) -> bool:
    """Whether the daemon that wrote status.json still runs (a stopped one holds nothing back)."""
    pid = saved.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def relay_suspended(queue_path: str) -> str | None:
    """suspended(read(queue_path)): what `mailq` and `queue list` show for waiting messages."""
    return suspended(read(queue_path))


def suspensions(queue_path: str) -> dict[str, str]:
    """Per relay account, why its delivery is held back now (its relay is unreachable): what
    `mailq` and `queue list` show for that account's waiting messages. Empty when the daemon is gone."""
    saved = read(queue_path)
    if not _alive(saved):
        return {}
    out = {}
    for a in saved.get("accounts") or []:
        if isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("suspended"), str):
            out[a["name"]] = a["suspended"]
    if isinstance(reason := saved.get("relay_suspended"), str):
        out["default"] = reason
    return out
