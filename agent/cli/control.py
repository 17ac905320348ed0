"""Talking to a running daemon over its submission socket (CLI side).

The same small SMTP client as `sendmail -q` (agent/submit/socket_client.py).
"""

from __future__ import annotations

from agent.submit.socket_client import Connection, Unavailable
from agent.submit.socket_client import flush as etrn


def running(path: str) -> bool:
    """A daemon answers 220 on the socket."""
    try:
        conn = Connection.open_unix(path, timeout=2.0)
    except Unavailable:
        return False
    try:
        return conn.reply(2.0).code == 220
    except OSError:
        return False
    finally:
        conn.close()


def flush(path: str) -> bool:
    """ETRN: everything due now. False when no daemon listens."""
    try:
        return etrn(path, "localhost").code == 250
    except (Unavailable, OSError):
        return False
