"""The DKIM relaxed body hash (RFC 6376 3.4.4) over a stream of chunks, in constant memory.

Byte for byte what `signing.relaxed_body` (and so dkimpy) gives for the whole body
(tests/test_streaming_intake.py checks it on random bodies and chunkings). The stream is cut
only where neither substitution of the canonicalization can match across the cut, and the
empty lines at the end, which relaxed drops, are held back as a count until a line with
content follows them.
"""

from __future__ import annotations

import base64
import hashlib

from agent.dkim.signing import canonical_lines

HOLD = 1 << 16  # an unterminated line longer than this is canonicalized in pieces
_PAIRS = 1 << 15  # held-back empty lines are hashed this many at a time


def trailing_pairs(data: bytes) -> int:
    """How many CRLF pairs `data` ends with (counted from its end, two bytes at a time)."""
    tail = data[len(data.rstrip(b"\r\n")) :]
    if not tail.endswith(b"\n"):
        return 0
    # from its end the tail alternates \n, \r, \n, ... up to where two equal bytes meet
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[start : start + 1] == b"\n":
        start += 1
    return (len(tail) - start) // 2


def _safe_cut(data: bytes) -> int:
    """Where a line with no LF (yet) can be cut: not inside a run of blanks, not between a
    blank and the CR after it (both substitutions only match within such spans)."""
    # after the last byte that is neither, or after a CR whose next byte is known (and not LF)
    return max(len(data.rstrip(b" \t\r")), data.rfind(b"\r", 0, len(data) - 1) + 1)


def _squeezed(rest: bytes) -> bytes:
    """A leftover of blanks (perhaps then a CR) that cannot be cut: one space stands for the
    run, which relaxed canonicalization turns into one space (or nothing before CRLF) anyway."""
    cr = rest.endswith(b"\r")
    blanks = rest[:-1] if cr else rest
    return (b" " if blanks else b"") + (b"\r" if cr else b"")


class RelaxedBodyHash:
    """`update()` with the body's chunks in order, then `digest()`: the base64 bh= value."""

    def __init__(self, hold: int = HOLD) -> None:
        self._hold = hold
        self._sha = hashlib.sha256()
        self._carry = b""  # the unterminated last line so far
        self._blank = 0  # CRLF pairs held back: dropped if nothing but them follows
        self._any = False  # whether anything has been hashed

    def update(self, data: bytes) -> None:
        data = self._carry + data if self._carry else data
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) > self._hold:
            cut = _safe_cut(data)
            if len(data) - cut > self._hold:
                data = data[:cut] + _squeezed(data[cut:])
        self._carry = data[cut:]
        if cut:
            self._feed(canonical_lines(data[:cut]))

    def _feed(self, canon: bytes) -> None:
        pairs = trailing_pairs(canon)
        if pairs * 2 == len(canon):
            self._blank += pairs
            return
        self._flush_blank()
        self._sha.update(memoryview(canon)[: len(canon) - 2 * pairs])
        self._any = True
        self._blank = pairs

    def _flush_blank(self) -> None:
        while self._blank:
            n = min(self._blank, _PAIRS)
            self._sha.update(b"\r\n" * n)
            self._blank -= n

    def digest(self) -> bytes:
        """The hash of what was given (call once, after the last update)."""
        tail = canonical_lines(self._carry)
        self._carry = b""
        if tail:
            self._flush_blank()
            self._sha.update(tail)
            self._any = True
        # relaxed ends a body with exactly one CRLF; a body of nothing but empty lines is empty
        if self._any:
            self._sha.update(b"\r\n")
        return base64.b64encode(self._sha.digest())
