"""What `mailq`, `queue list` and `status` show: plain data from the queue
directories and the maildrop, formatted as Postfix's mailq or as JSON."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from agent import envelope as fmt
from agent import queue_state as qs
from agent.queue import Entry, Queue


def iso8601(ts: float) -> str:
    z = time.strftime("%z", time.localtime(ts))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f"{z[:3]}:{z[3:]}"


def state_of(st: qs.State) -> str:
    if st.state == "hold":
        return "hold"
    return st.state if st.state in ("deferred", "failed") else "queued"


def item(e: Entry) -> dict[str, Any]:
    st = e.state
    rcpts = []
    for i, addr in enumerate(e.envelope.recipients):
        s = {qs.PENDING: "pending", qs.SENT: "sent", qs.FAILED: "failed"}[st.rcpt_state(i)]
        rcpts.append({"address": addr, "state": s, "last_error": st.rcpt_error(i) or None})
    state = state_of(st)
    return {
        "id": e.qid,
        "state": state,
        "sender": e.envelope.sender,
        "size": e.size,
        "created": iso8601(e.envelope.created),
        "attempts": st.attempts,
        "next_attempt": iso8601(st.next_attempt) if state == "deferred" and st.next_attempt else None,
        "last_error": st.last_error or None,
        "recipients": rcpts,
    }


def maildrop_items(path: str) -> Iterator[dict[str, Any]]:
    """Mail still waiting in the maildrop (daemon down), listed as queued."""
    from agent.pickup import qid_for

    try:
        names = [n for n in os.listdir(path) if not n.startswith(".")]
    except OSError:
        return
    for name in sorted(names):
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                env, msg = fmt.decode(fh.read())
        except (OSError, fmt.FormatError):
            continue
        yield {
            "id": qid_for(name, st, b""),  # display only: the id may change at pickup
            "state": "queued",
            "sender": env.sender,
            "size": len(msg),
            "created": iso8601(st.st_mtime),
            "attempts": 0,
            "next_attempt": None,
            "last_error": None,
            "recipients": [{"address": r, "state": "pending", "last_error": None} for r in env.recipients],
        }


def collect(queue: Queue, maildrop: str) -> list[dict[str, Any]]:
    try:
        os.stat(queue.msg)
        items = [item(e) for e in queue.entries()]
    except FileNotFoundError:
        items = []  # no queue yet: nothing was ever queued (PermissionError goes to the caller)
    return items + list(maildrop_items(maildrop))


def format_mailq(items: list[dict[str, Any]]) -> str:
    """Postfix's mailq layout, so check_mailq and friends can read it."""
    if not items:
        return "Mail queue is empty\n"
    out = [f"{'-Queue ID-':<17} {'--Size--':>8} ----Arrival Time---- -Sender/Recipient-------"]
    indent = " " * (17 + 1 + 8 + 1 + 20 + 1)  # recipients line up under the sender, as in Postfix
    total = 0
    for it in items:
        flag = {"hold": "!", "queued": "*" if not it["attempts"] else " "}.get(it["state"], " ")
        created = time.strptime(it["created"][:19], "%Y-%m-%dT%H:%M:%S")
        arrival = time.strftime("%a %b %d %H:%M:%S", created)
        out.append(f"{it['id']}{flag} {it['size']:>8} {arrival:>20} {it['sender'] or 'MAILER-DAEMON'}")
        if it["last_error"]:
            out.append(f"({it['last_error'][:200]})")
        for r in it["recipients"]:
            if r["state"] == "pending" or it["state"] == "failed":
                out.append(indent + r["address"])
        out.append("")
        total += it["size"]
    n = len(items)
    out.append(f"-- {(total + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}.")
    return "\n".join(out) + "\n"


def counts(items: list[dict[str, Any]]) -> dict[str, int]:
    c = {"queued": 0, "deferred": 0, "failed": 0, "hold": 0}
    for it in items:
        c[it["state"]] = c.get(it["state"], 0) + 1
    return c
