"""Queue ids: a new message's, a valid one, and a maildrop file's (pure naming, no I/O)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import time


def new_id(now: float | None = None) -> str:
    """16 upper-case hex digits: microseconds (sort by arrival) + randomness."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros & 0xFFFFFFFFFFF:011X}{binascii.hexlify(os.urandom(3)).decode()[:5].upper()}"


def valid_id(qid: str) -> bool:
    return len(qid) == 16 and all(c in "0123456789ABCDEF" for c in qid)


def qid_for(name: str, st: os.stat_result, key: bytes) -> str:
    """Deterministic per file, so a crash between enter and unlink cannot duplicate.

    The submitter chooses the name and the mtime, so the random part is a keyed hash:
    nobody without the queue's key can aim a drop at an existing message's id.
    """
    ident = f"{name}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}".encode()
    digits = hmac.new(key, ident, hashlib.sha256).hexdigest()[:5].upper()
    return f"{(st.st_mtime_ns // 1000) & 0xFFFFFFFFFFF:011X}{digits}"
