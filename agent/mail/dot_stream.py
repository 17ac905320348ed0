"""SMTP dot-stuffing (RFC 5321 4.5.2) of a message that arrives in chunks (pure).

The output for any split of a message into chunks is byte for byte what
`smtp_text.dot_stuff` makes of the whole message, so a message of any size can be
stuffed while it is read from its queue file, holding one chunk at a time.
"""

from __future__ import annotations

LINE_START = b"\r\n"


class DotStuffer:
    """feed() each chunk in order, then end() once: a "." that starts a line is doubled, even when
    the chunk boundary falls inside the CR LF before it or right after it."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        # The message's last two bytes so far; it starts as if after a line end, so that a "." at
        # the very start of the message is doubled too.
        self._tail = LINE_START

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        # A "\r\n." split by the boundary starts in the previous chunk's last two bytes: stuff the
        # two joined, then drop them again (the doubled "." always lands after them).
        joined = self._tail + chunk
        self._tail = joined[-2:]
        return joined.replace(b"\r\n.", b"\r\n..")[2:]

    def end(self) -> bytes:
        """The end of the DATA payload: a line end if the message lacks one, then "."."""
        return b".\r\n" if self._tail == LINE_START else b"\r\n.\r\n"
