"""`queue hold` and `queue release`: which messages, and the daemon told.

Holding and releasing are state-file rewrites (agent.queue.bulk); a running daemon learns of a
release through the flush it is sent (ETRN on its socket) and delivers at once. A hold needs no
word to the daemon: it reads the state file before each attempt.
"""

from __future__ import annotations

from agent.config import Config
from agent.errors import AgentError
from agent.queue import bulk, queue_file, state_file
from agent.queue.ids import valid_id
from agent.queue.store import Queue

MANUAL_REASON = "held by `relay-agent queue hold`"


def pick(qid: str | None, all_: bool, sender: str | None, domain: str | None) -> bulk.Pick:
    """The held messages one of ID, --all, --sender ADDR or --domain D names. --domain matches
    the envelope sender's domain, and mail held for that domain's DNS records."""
    if bool(qid) + all_ + bool(sender) + bool(domain) != 1:
        raise AgentError("give exactly one of ID, --all, --sender ADDR or --domain DOMAIN")
    if qid:
        want = qid.upper()
        return lambda i, env, state: i == want
    if sender:
        who = sender.lower()
        return lambda i, env, state: env.sender.lower() == who
    if domain:
        dom = domain.lower().rstrip(".")
        tag = state_file.dns_hold(dom)
        return lambda i, env, state: env.sender_domain() == dom or state.held_for == tag
    return lambda i, env, state: True


def release(queue: Queue, choose: bulk.Pick) -> list[str]:
    try:
        return bulk.release(queue, choose)
    except FileNotFoundError:
        return []  # no queue yet
    except PermissionError as exc:
        raise AgentError(f"cannot change the queue: {exc.strerror}: {exc.filename}") from None


def hold_one(queue: Queue, qid: str) -> bool:
    """`queue hold ID`: False when it has nothing left to send (failed) or is held already."""
    qid = qid.upper()
    if not (valid_id(qid) and queue.exists(qid)):
        raise AgentError(f"no message {qid} in the queue")
    try:
        state = queue.read_state(qid)
    except queue_file.FormatError as exc:
        raise AgentError(f"{qid}: unreadable state file: {exc}") from None
    if state.held or state.state == "failed":
        return False
    state.hold(state_file.MANUAL, MANUAL_REASON)
    queue.write_state(qid, state)
    return True


def tell_daemon(cfg: Config) -> bool:
    """Released mail goes out now when the daemon runs (else at its start)."""
    from agent.cli import control

    return bool(control.flush(cfg.listen.socket))
