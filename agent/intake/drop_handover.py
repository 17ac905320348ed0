"""One drop-socket hand-over, a chunk at a time: its envelope header read and checked, then its
message streamed into a maildrop file (agent.queue.maildrop_write.Pending) as it arrives.

The bytes are untrusted (agent.intake.drop_socket). Only the envelope header is kept in memory
(at most envelope.MAX_HEADER); the message goes to the file as it comes, checked on the way
for NUL bytes and for the end marker at the offset its `size` line gave. Any refusal
removes what was written; the hand-over is then read to its end (DRAIN, bounded) so that
the client's write finishes and it reads the reply.

No socket I/O here: agent.intake.drop_socket reads, and calls these with what it read.
"""

from __future__ import annotations

import enum
import logging
import socket

from agent.errors import AgentError, MessageError, TooBigError
from agent.intake.cleanup import Cleanup
from agent.queue import maildrop_write, queue_file

log = logging.getLogger("relay-agent")

DRAIN_FACTOR = 4  # a refused hand-over is read (and dropped) up to this many times the limit
MALFORMED = "554 5.6.0 malformed hand-over: "
TOO_BIG = "552 5.3.4 message exceeds the size limit (limits.max_message_size)"


class Stage(enum.Enum):
    HEAD = "reading the envelope header"
    SCREEN = "envelope checks and the file's creation (a worker thread)"
    BODY = "streaming the message into the file"
    COMMIT = "fsync and rename (a worker thread)"
    DRAIN = "refused: reading to the end before replying"


class Handover:
    def __init__(self, conn: socket.socket, uid: int, max_size: int, deadline: float) -> None:
        self.conn = conn
        self.uid = uid
        self.max_size = max_size
        self.limit = max_size + queue_file.HEADER_SLACK  # all bytes a hand-over may hold
        self.deadline = deadline
        self.stage = Stage.HEAD
        self.buf = bytearray()  # the envelope header so far, then what came after it
        self.received = 0
        self.env = queue_file.Envelope("", (), 0.0)
        self.size = 0
        self.left = 0  # message bytes still to come
        self.tail = b""  # what came after them: the end marker, if well formed
        self.pending: maildrop_write.Pending | None = None
        self.refusal = ""
        self.dead = False  # cut off (deadline, shutdown): a worker's result is thrown away
        self.counted = 0  # of its header bytes, in the drop socket's HEADER_BUDGET

    def head(self, chunk: bytes) -> bool:
        """Add to the envelope header; True once it is complete and parsed (self.buf then
        holds the bytes after it). Raises FormatError or TooBigError."""
        seen = len(self.buf)
        self.buf += chunk
        if not (self.buf.startswith(queue_file.MAGIC) or queue_file.MAGIC.startswith(self.buf)):
            raise queue_file.FormatError("not a relay-agent queue file")
        cut = self.buf.find(b"\n\n", max(seen - 1, 0), queue_file.MAX_HEADER)
        if cut < 0:
            if len(self.buf) >= queue_file.MAX_HEADER:
                raise queue_file.FormatError("envelope header not terminated")
            return False
        self.env, self.size = queue_file.parse_header(bytes(self.buf[len(queue_file.MAGIC) : cut + 1]))
        if self.size > self.max_size:
            raise TooBigError(f"message exceeds the size limit of {self.max_size} bytes")
        del self.buf[: cut + 2]
        self.left = self.size
        return True

    def open(self, cleanup: Cleanup) -> None:
        """In a worker: cleanup's envelope checks (recipients, aliases, sender), then the
        maildrop file with the header rewritten to name the peer's uid. Raises AgentError."""
        env = self.env
        cleanup.screen_envelope(env.sender, env.recipients)  # size and NUL are checked as the bytes pass
        header = queue_file.encode_header(
            queue_file.Envelope(env.sender, env.recipients, env.created, env.dsn, self.uid), self.size
        )
        pending = maildrop_write.Pending(cleanup.cfg.queue.maildrop, cleanup.cfg.queue.min_free)
        try:
            pending.write(header)
        except BaseException:
            pending.abort()
            raise
        self.pending = pending

    def body(self, chunk: bytes | bytearray) -> None:
        """The message's next bytes, into the file; then the end marker, checked. Raises
        MessageError, FormatError, or the file's AgentError."""
        take = min(self.left, len(chunk))
        if take:
            if chunk.find(b"\0", 0, take) >= 0:
                raise MessageError("message contains NUL bytes")
            assert self.pending is not None
            self.pending.write(memoryview(chunk)[:take])
            self.left -= take
        if take < len(chunk):
            self.tail += chunk[take:]
            if not queue_file.END.startswith(self.tail):
                raise queue_file.FormatError("bytes after the message where its end marker belongs")

    def complete(self) -> bool:
        """At the client's EOF: whether the message and its end marker all came (the file then
        has them too)."""
        if self.left or self.tail != queue_file.END:
            return False
        assert self.pending is not None
        self.pending.write(queue_file.END)
        return True

    def refuse(self, reply: str) -> None:
        """Nothing of it is kept; read on to the client's EOF, then reply."""
        self.abort()
        self.refusal = reply
        self.stage = Stage.DRAIN
        self.buf = bytearray()

    def abort(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.abort()

    def drained(self) -> bool:
        """Read far enough past the limit to reply without waiting for EOF."""
        return self.received > DRAIN_FACTOR * self.limit

    def final_refusal(self) -> str:
        """The size limit first, whatever else was wrong, as with the whole-message check."""
        return TOO_BIG if self.received > self.limit else self.refusal


def refusal(exc: Exception) -> str:
    """The reply for what head(), body() or open() raised (call it where it was caught)."""
    if isinstance(exc, queue_file.FormatError):
        return MALFORMED + str(exc)
    if isinstance(exc, AgentError):
        return exc.smtp_reply()
    log.exception("drop socket: unexpected error")
    return "451 4.3.0 internal error; try again later"
