"""What `mailq`, `queue list` and `status` show: plain data from the queue
directories and the maildrop, formatted as Postfix's mailq or as JSON."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from typing import Any

from agent.queue import bulk, queue_file, state_file
from agent.queue.ids import qid_for
from agent.queue.store import Entry, Queue
from agent.status.snapshot import suspensions


def iso8601(ts: float) -> str:
    t = time.localtime(ts)  # once: a listing formats one per message
    z = time.strftime("%z", t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f"{z[:3]}:{z[3:]}"


def state_of(state: state_file.State) -> str:
    if state.held:
        return state_file.HELD
    return state.state if state.state in ("deferred", "failed") else "queued"


def item(e: Entry, suspended: str | None = None) -> dict[str, Any]:
    """suspended: why the daemon holds back delivery now (relay_suspended), shown as the reason of a
    message that would otherwise be listed as queued without one."""
    state = e.state
    shown = state_of(state)
    waiting = suspended if shown == "queued" and suspended else None
    if waiting:
        shown = "deferred"
    rcpts = []
    for i, addr in enumerate(e.envelope.recipients):
        s = {state_file.PENDING: "pending", state_file.SENT: "sent", state_file.FAILED: "failed"}[
            state.rcpt_state(i)
        ]
        error = state.rcpt_error(i) or (waiting if s == "pending" else None)
        rcpts.append({"address": addr, "state": s, "last_error": error or None})
    return {
        "id": e.qid,
        "state": shown,
        "sender": e.envelope.sender,
        "size": e.size,
        "created": iso8601(e.envelope.created),
        "attempts": state.attempts,
        "next_attempt": iso8601(state.next_attempt) if shown == "deferred" and state.next_attempt else None,
        "last_error": state.last_error or waiting or None,
        "account": e.envelope.account,
        "recipients": rcpts,
    }


def maildrop_items(path: str) -> Iterator[dict[str, Any]]:
    """Mail still waiting in the maildrop (daemon down), listed as queued."""
    try:
        names = [n for n in os.listdir(path) if not n.startswith(".")]
    except OSError:
        return
    if not names:
        return  # agent.intake.pickup imports cleanup and DKIM: a tenth of a second a listing need not pay

    for name in sorted(names):
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                env, msg = queue_file.decode(fh.read())
        except (OSError, queue_file.FormatError):
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
            "account": None,  # chosen when the daemon picks it up (by its From: domain)
        }


def collect(queue: Queue, maildrop: str) -> list[dict[str, Any]]:
    try:
        os.stat(queue.msg)
        why = suspensions(queue.path)
        items = [item(e, why.get(e.envelope.account)) for e in bulk.entries(queue)]
    except FileNotFoundError:
        items = []  # no queue yet: nothing was ever queued (PermissionError goes to the caller)
    return items + list(maildrop_items(maildrop))


ARRIVAL = "%a %b %d %H:%M:%S"


class MailqText:
    """Postfix's mailq layout, so check_mailq and friends can read it, one message at a time."""

    HEAD = f"{'-Queue ID-':<17} {'--Size--':>8} ----Arrival Time---- -Sender/Recipient-------"
    INDENT = " " * (17 + 1 + 8 + 1 + 20 + 1)  # recipients line up under the sender, as in Postfix

    def __init__(self) -> None:
        self.out = [self.HEAD]
        self.total = 0
        self.count = 0

    def _first(self, qid: str, flag: str, size: int, arrival: str, sender: str) -> None:
        self.out.append(f"{qid}{flag} {size:>8} {arrival:>20} {sender or 'MAILER-DAEMON'}")
        self.total += size
        self.count += 1

    def fresh(self, qid: str, env: queue_file.Envelope, size: int, suspended: str | None) -> None:
        """A message with no state file: what item(entry, suspended) makes of it (never tried,
        every recipient pending; queued, or deferred with the suspension as its reason),
        without the dict."""
        arrival = time.strftime(ARRIVAL, time.localtime(env.created))
        out = self.out
        flag = " " if suspended else "*"
        out.append(f"{qid}{flag} {size:>8} {arrival:>20} {env.sender or 'MAILER-DAEMON'}")
        if suspended:
            out.append(f"({suspended[:200]})")
        for r in env.recipients:
            out.append(self.INDENT + r)
        out.append("")
        self.total += size
        self.count += 1

    def item(self, it: dict[str, Any]) -> None:
        state = it["state"]
        flag = "!" if state == state_file.HELD else "*" if state == "queued" and not it["attempts"] else " "
        # fromisoformat is C; time.strptime is pure Python
        arrival = datetime.datetime.fromisoformat(it["created"]).strftime(ARRIVAL)
        self._first(it["id"], flag, it["size"], arrival, it["sender"])
        if it["last_error"]:
            self.out.append(f"({it['last_error'][:200]})")
        for r in it["recipients"]:
            if r["state"] == "pending" or it["state"] == "failed":
                self.out.append(self.INDENT + r["address"])
        self.out.append("")

    def text(self) -> str:
        if not self.count:
            return "Mail queue is empty\n"
        n = self.count
        self.out.append(f"-- {(self.total + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}.")
        return "\n".join(self.out) + "\n"


def format_mailq(items: list[dict[str, Any]]) -> str:
    """Postfix's mailq layout for collect()'s items."""
    text = MailqText()
    for it in items:
        text.item(it)
    return text.text()


def mailq(queue: Queue, maildrop: str) -> str:
    """format_mailq(collect(queue, maildrop)), without a dict per fresh message: with 100,000
    queued, building and formatting the dicts cost more than reading the files."""
    text = MailqText()
    try:
        os.stat(queue.msg)
        why = suspensions(queue.path)
        for qid, env, size, state in bulk.scan(queue):
            if state is None:
                text.fresh(qid, env, size, why.get(env.account))
            else:
                text.item(item(Entry(qid, env, state or state_file.State(), size), why.get(env.account)))
    except FileNotFoundError:
        pass  # no queue yet: nothing was ever queued (PermissionError goes to the caller)
    for it in maildrop_items(maildrop):
        text.item(it)
    return text.text()


def counts(items: list[dict[str, Any]]) -> dict[str, int]:
    c = {"queued": 0, "deferred": 0, "failed": 0, state_file.HELD: 0}
    for it in items:
        c[it["state"]] = c.get(it["state"], 0) + 1
    return c


def oldest_seconds(items: list[dict[str, Any]], now: float) -> int:
    """Age of the oldest message not failed (what relay_agent_queue_oldest_seconds says); 0: none."""
    waiting = [
        datetime.datetime.fromisoformat(it["created"]).timestamp() for it in items if it["state"] != "failed"
    ]
    return max(0, int(now - min(waiting))) if waiting else 0
