"""A minimal SMTP client for the daemon's Unix socket, on `_socket` (`socket` is dear to import).

Only what sendmail needs: one transaction, then QUIT. Replies map to agent.errors
types in `error_for_reply`, the one place that turns SMTP codes into sysexits.
"""

import _socket

from agent.errors import (
    AgentError,
    MessageError,
    NoSpaceError,
    PolicyError,
    TempError,
    TooBigError,
    UnknownRecipientError,
)
from agent.mail.smtp_text import xtext

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is dear on sendmail's path
if TYPE_CHECKING:
    from collections.abc import Sequence

CONNECT_TIMEOUT = 30.0  # connecting, and the greeting
COMMAND_TIMEOUT = 60.0
# The answer to a whole message (and the writing of it): the daemon answers once it has written
# and fsynced it, which on a disk busy with other writeback takes seconds, rarely tens. A daemon
# silent for longer is taken for hung and the maildrop takes the message: waiting too little
# risks a duplicate (the daemon may still store it), never a loss; too long only holds the caller.
REPLY_TIMEOUT = 60.0
MAX_LINE = 4096
CHUNK = 1 << 16  # a big message is dot-stuffed and sent this much at a time, not copied whole


class Unavailable(Exception):
    """No daemon took the message (none runs, or it went away first): use the maildrop."""


class Lost(Unavailable):
    """The daemon went away or stopped answering once reached: its other socket (the same
    daemon) is not tried, the maildrop takes the message. If some of it was sent, the daemon
    may have kept it too: a duplicate at worst, never a loss."""


class Reply:
    __slots__ = ("code", "lines")

    def __init__(self, code: int, lines: list[str]) -> None:
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.lines).split())

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


def error_for_reply(reply: Reply) -> AgentError:
    """The error (hence exit status) for a refusal, carrying the server's words."""
    code, text = reply.code, str(reply)
    status = reply.text.split(" ", 1)[0] if reply.lines else ""
    if code >= 500:
        if status.startswith("5.1.1"):
            return UnknownRecipientError(text)
        if status.startswith("5.7."):
            return PolicyError(text)
        if code == 552 or status.startswith("5.3.4"):
            return TooBigError(text)
        if status[:4] in ("5.1.", "5.5.", "5.6."):
            return MessageError(text)
        if code in (550, 553):
            return PolicyError(text)
        return MessageError(text)
    if code == 452:
        return NoSpaceError(text)
    return TempError(text)


class Connection:
    """One SMTP session over a stream socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def open_unix(cls, path: str, timeout: float | None = None) -> "Connection":
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT if timeout is None else timeout)
            sock.connect(path)
        except TimeoutError:
            sock.close()  # its backlog is full and stays full: a daemon that does not accept
            raise Lost(f"{path}: the daemon does not accept connections") from None
        except OSError as exc:
            sock.close()
            raise Unavailable(f"{path}: {exc.strerror or exc}") from None
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
                return line.rstrip(b"\r")
            if len(self.buf) > MAX_LINE:
                raise OSError("SMTP reply line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("connection closed by the daemon")
            self.buf += chunk

    def reply(self, timeout: float | None = None) -> Reply:
        self.sock.settimeout(COMMAND_TIMEOUT if timeout is None else timeout)
        lines: list[str] = []
        while True:
            line = self._line().decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit():
                raise OSError(f"malformed SMTP reply {line[:40]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)

    def command(self, line: str, timeout: float | None = None) -> Reply:
        self.send(line.encode() + b"\r\n")
        return self.reply(timeout)


def send_stuffed(conn: Connection, parts: "Sequence[bytes]") -> None:
    """Send dot_stuff(b"".join(parts)) about a CHUNK at a time, so that a big message is never
    copied whole; a small one is still one write. Each piece is stuffed with the two bytes
    before it, as a CR LF "." may straddle a cut; a "." at the very start counts as after a
    line end."""
    tail = b"\r\n"
    out: list[bytes] = []
    held = 0
    for part in parts:
        for pos in range(0, len(part), CHUNK):
            piece = tail + part[pos : pos + CHUNK]
            tail = piece[-2:]
            out.append(piece.replace(b"\r\n.", b"\r\n..")[2:])
            held += len(out[-1])
            if held >= CHUNK:
                conn.send(b"".join(out))
                out, held = [], 0
    out.append(b".\r\n" if tail == b"\r\n" else b"\r\n.\r\n")
    conn.send(b"".join(out))


def _extensions(reply: Reply) -> set[str]:
    return {line.split(" ", 1)[0].upper() for line in reply.lines[1:]}


def submit(
    path: str,
    helo: str,
    sender: str,
    recipients: list[str],
    message: "bytes | Sequence[bytes]",
    dsn: tuple[tuple[str, str], ...] = (),
) -> None:
    """Hand one message (whole, or the parts it is held in) to the daemon; returns once it
    replied 250 to the final ".".

    Raises Unavailable (Lost: the daemon went away or fell silent mid-way) when the maildrop
    should take the message, an AgentError for the daemon's refusal.
    """
    parts = (message,) if isinstance(message, bytes) else message
    conn = Connection.open_unix(path)
    try:
        _transaction(conn, helo, sender, recipients, parts, dict(dsn))
    finally:
        conn.close()


def _transaction(
    conn: Connection, helo: str, sender: str, rcpts: list[str], parts: "Sequence[bytes]", dsn: dict[str, str]
) -> None:
    try:
        # our own daemon reads EHLO sent ahead of its greeting: one round trip less per message
        conn.send(f"EHLO {helo or 'localhost'}\r\n".encode())
        greeting = conn.reply(CONNECT_TIMEOUT)
        if greeting.code != 220:
            raise Unavailable(f"daemon greeting: {greeting}")
        ehlo = conn.reply()
        if ehlo.code != 250:
            raise Unavailable(f"daemon EHLO reply: {ehlo}")
        ext = _extensions(ehlo)
        _envelope(conn, ext, sender, rcpts, parts, dsn)
    except OSError as exc:
        raise Unavailable(f"daemon session failed: {exc}") from None
    try:
        conn.sock.settimeout(REPLY_TIMEOUT)
        send_stuffed(conn, parts)
        final = conn.reply(REPLY_TIMEOUT)
    except OSError as exc:  # incl. a timeout: it may or may not have queued it
        raise Lost(f"lost the daemon while sending the message: {exc}") from None
    if final.code == 421:  # closing, which is not an answer about this message: it did not take it
        raise Unavailable(f"daemon is closing: {final}")
    if final.code != 250:
        raise _refusal(conn, final)
    _quit(conn)


def _envelope(
    conn: Connection,
    ext: set[str],
    sender: str,
    rcpts: list[str],
    parts: "Sequence[bytes]",
    dsn: dict[str, str],
) -> None:
    """MAIL, RCPT... and DATA; with PIPELINING in one write (fewer round trips: startup budget)."""
    mail = f"MAIL FROM:<{sender}>"
    if "SIZE" in ext:
        mail += f" SIZE={sum(map(len, parts))}"
    if "8BITMIME" in ext and not all(part.isascii() for part in parts):
        mail += " BODY=8BITMIME"
    if "DSN" in ext and "ret" in dsn:
        mail += f" RET={dsn['ret']}"
    if "DSN" in ext and "envid" in dsn:
        mail += f" ENVID={xtext(dsn['envid'])}"
    notify = f" NOTIFY={dsn['notify']}" if "DSN" in ext and "notify" in dsn else ""
    commands = [mail] + [f"RCPT TO:<{rcpt}>{notify}" for rcpt in rcpts] + ["DATA"]
    if "PIPELINING" in ext:
        conn.send("".join(c + "\r\n" for c in commands).encode())
        replies = [conn.reply() for _ in commands]
    else:
        replies = []
        for c in commands:
            replies.append(conn.command(c))
            if replies[-1].code >= 400:
                break
    for command, reply in zip(commands, replies, strict=False):
        ok = (354,) if command == "DATA" else (250, 251)
        if reply.code not in ok:
            # one refused recipient refuses the message. If a pipelined DATA got 354 anyway,
            # closing without the final "." abandons the transaction (QUIT would be data)
            if replies[-1].code == 354:
                raise error_for_reply(reply) if reply.code != 421 else Unavailable(str(reply))
            raise _refusal(conn, reply, before_data=True)


def _refusal(conn: Connection, reply: Reply, before_data: bool = False) -> Exception:
    _quit(conn)
    if before_data and reply.code == 421:
        return Unavailable(f"daemon is closing: {reply}")  # nothing handed over yet: maildrop is safe
    return error_for_reply(reply)


def _quit(conn: Connection) -> None:
    # the 221 is not worth a round trip: everything that matters was answered already
    try:
        conn.send(b"QUIT\r\n")
    except OSError:
        pass


def drop_path(socket_path: str) -> str:
    """The drop socket beside the SMTP one (agent/intake/drop_socket.py)."""
    return f"{socket_path}.drop" if socket_path else ""


def hand_over(path: str, data: bytes, *more: bytes) -> None:
    """Give the daemon's drop socket a whole maildrop-format message (data, then each of
    `more`, as one stream); returns on its 250.

    Raises Unavailable when there is no drop socket (try SMTP, then the maildrop), Lost when
    the daemon went away or fell silent (the maildrop, at once), an AgentError for a refusal.
    """
    conn = Connection.open_unix(path)
    try:
        conn.sock.settimeout(REPLY_TIMEOUT)  # a daemon reads as we write, unless it is hung
        try:
            for piece in (data, *more):
                conn.send(piece)
            conn.sock.shutdown(_socket.SHUT_WR)
        except TimeoutError:
            raise Lost(f"{path}: the daemon stopped reading the message") from None
        except OSError:
            pass  # e.g. refused as too big while we were still writing: its reply says so
        try:
            reply = conn.reply(REPLY_TIMEOUT)
        except OSError as exc:  # incl. a timeout: it may or may not have stored it
            raise Lost(f"lost the daemon while handing the message over: {exc}") from None
    finally:
        conn.close()
    if reply.code == 421:  # closing or too busy, not an answer about this message: the maildrop
        raise Lost(f"daemon is not taking messages: {reply}")
    if reply.code != 250:
        raise error_for_reply(reply)


def flush(path: str, helo: str) -> Reply:
    """Ask the daemon to run its queue now (ETRN on the local socket)."""
    conn = Connection.open_unix(path)
    try:
        try:
            if conn.reply(CONNECT_TIMEOUT).code != 220:
                raise Unavailable("the daemon is not accepting connections")
            conn.command(f"EHLO {helo or 'localhost'}")
            reply = conn.command("ETRN relay-agent")
        except OSError as exc:
            raise Unavailable(f"daemon session failed: {exc}") from None
        _quit(conn)
        return reply
    finally:
        conn.close()
