"""`sendmail -bs`: SMTP on stdin/stdout (Symfony Mailer, Drupal, Alpine use it).

Each transaction goes through the same prepare/deliver path as plain sendmail
and is answered 250 only once it is durably queued.
"""

from __future__ import annotations

from agent.errors import AgentError, TooBigError
from agent.mail import addressing
from agent.submit.args import Options
from agent.submit.submission import Runtime, deliver, envelope_sender, normalize, prepare

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs more than sendmail's own work
if TYPE_CHECKING:
    from typing import BinaryIO

MAX_COMMAND = 4096


class Session:
    def __init__(self, rt: Runtime, opts: Options, out: BinaryIO) -> None:
        self.rt, self.opts, self.out = rt, opts, out
        self.reset()

    def reset(self) -> None:
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.dsn: dict[str, str] = {}

    def reply(self, *lines: str) -> None:
        code, rest = lines[-1][:3], lines
        text = "".join(f"{code}-{line[4:]}\r\n" for line in rest[:-1]) + rest[-1] + "\r\n"
        self.out.write(text.encode())
        self.out.flush()

    def ehlo(self) -> None:
        host = self.rt.hostname
        size = self.rt.max_message_size
        self.reply(
            f"250 {host}",
            "250 PIPELINING",
            f"250 SIZE {size}",
            "250 8BITMIME",
            "250 DSN",
            "250 ENHANCEDSTATUSCODES",
        )

    def mail(self, arg: str) -> None:
        if self.sender is not None:
            self.reply("503 5.5.1 nested MAIL command")
            return
        path, params = _path(arg, "FROM:")
        if path is None:
            self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
            return
        size = params.get("SIZE", "0")
        if size.isdigit() and int(size) > self.rt.max_message_size:
            self.reply(f"552 5.3.4 message size exceeds the limit of {self.rt.max_message_size} bytes")
            return
        self.sender = envelope_sender(self.rt, path)
        for key in ("RET", "ENVID"):
            if key in params:
                self.dsn[key.lower()] = _unxtext(params[key]) if key == "ENVID" else params[key].upper()
        self.reply("250 2.1.0 ok")

    def rcpt(self, arg: str) -> None:
        if self.sender is None:
            self.reply("503 5.5.1 need MAIL before RCPT")
            return
        path, params = _path(arg, "TO:")
        if not path:
            self.reply("501 5.5.4 syntax: RCPT TO:<address>")
            return
        self.rcpts += addressing.resolve_recipient(path, self.rt.aliases, self.rt.local_names)
        if "NOTIFY" in params:
            self.dsn.setdefault("notify", params["NOTIFY"].upper())
        self.reply("250 2.1.5 ok")

    def data(self, stdin: BinaryIO) -> None:
        if self.sender is None or not self.rcpts:
            self.reply("503 5.5.1 need MAIL and RCPT before DATA")
            return
        self.reply("354 end data with <CR><LF>.<CR><LF>")
        message, too_big = _read_data(stdin, self.rt.max_message_size)
        sender, rcpts = self.sender, self.rcpts
        dsn = tuple(self.dsn.items()) or self.opts.dsn()
        self.reset()
        if too_big:
            raise TooBigError(f"message exceeds the size limit of {self.rt.max_message_size} bytes")
        final = [normalize(message)]  # one part: read whole, as DATA's lines arrive
        rcpts = prepare(self.rt, final, sender, rcpts, self.opts.full_name, False)
        deliver(self.rt, sender, rcpts, final, dsn)
        self.reply("250 2.0.0 ok: queued")


def _path(arg: str, prefix: str) -> tuple[str | None, dict[str, str]]:
    """`FROM:<a@b> SIZE=10` -> ("a@b", {"SIZE": "10"})."""
    if not arg.upper().startswith(prefix):
        return None, {}
    rest = arg[len(prefix) :].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None, {}
        path, tail = rest[1:end], rest[end + 1 :]
    else:
        path, _, tail = rest.partition(" ")
    params = {}
    for word in tail.split():
        key, _, val = word.partition("=")
        params[key.upper()] = val
    return path, params


def _unxtext(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if (
            value[i] == "+"
            and i + 2 < len(value)
            and all(c in "0123456789ABCDEFabcdef" for c in value[i + 1 : i + 3])
        ):
            out.append(chr(int(value[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _read_data(stdin: BinaryIO, limit: int) -> tuple[bytes, bool]:
    """The DATA payload, un-dot-stuffed; past the limit, read on but keep nothing.

    Only CRLF ends a line here: a bare LF (or CR) inside a line is content, and only
    `.` CRLF right after a CRLF ends the data, as Postfix's smtpd_forbid_bare_newline
    = normalize does. Ending at `.` LF would let text inside the body that the next
    hop reads differently (SMTP smuggling) start a second transaction.
    """
    parts: list[bytes] = []
    size = 0
    line_start = True
    while True:
        chunk = stdin.readline()
        if not chunk or (line_start and chunk == b".\r\n"):
            break
        if line_start and chunk.startswith(b"."):
            chunk = chunk[1:]
        line_start = chunk.endswith(b"\r\n")
        size += len(chunk)
        if size <= limit:
            parts.append(chunk)
    return b"".join(parts), size > limit


def serve(rt: Runtime, opts: Options, stdin: BinaryIO | None, stdout: BinaryIO) -> int:
    """Run the session until QUIT or EOF; refusals are SMTP replies, so the exit is 0."""
    session = Session(rt, opts, stdout)
    session.reply(f"220 {rt.hostname} ESMTP relay-agent (sendmail -bs)")
    while stdin is not None:
        raw = stdin.readline(MAX_COMMAND)
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb == "QUIT":
            session.reply("221 2.0.0 bye")
            break
        try:
            _dispatch(session, verb, arg, stdin)
        except AgentError as exc:
            session.reply(" ".join(exc.smtp_reply().split()))
        except Exception as exc:  # one bad transaction must not end the session unanswered
            session.reset()
            session.reply(f"451 4.3.0 internal error, message not queued: {type(exc).__name__}")
    return 0


def _dispatch(session: Session, verb: str, arg: str, stdin: BinaryIO) -> None:
    if verb == "EHLO":
        session.reset()
        session.ehlo()
    elif verb == "HELO":
        session.reset()
        session.reply(f"250 {session.rt.hostname}")
    elif verb == "MAIL":
        session.mail(arg)
    elif verb == "RCPT":
        session.rcpt(arg)
    elif verb == "DATA":
        session.data(stdin)
    elif verb == "RSET":
        session.reset()
        session.reply("250 2.0.0 ok")
    elif verb == "NOOP":
        session.reply("250 2.0.0 ok")
    elif verb == "VRFY":
        session.reply("252 2.5.2 cannot verify, but will accept the message and attempt delivery")
    elif verb == "HELP":
        session.reply("214 2.0.0 commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT")
    else:
        session.reply("500 5.5.2 command not recognized")
