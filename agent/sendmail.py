"""`sendmail`: the drop-in entry point cron, PHP and friends spawn once per message.

Startup time is the product here (budget: 20 ms), so this module and all it
imports on the normal path stay on cheap builtins: no re, json, tomllib, socket,
email, asyncio, typing or dataclasses. The config comes from a pre-digested
marshal file (agent.digest); TOML is parsed only when that is stale.
"""

import posix  # not os: see config_path
import sys
import time

from agent import addressing, digest, headers, pickup_trigger
from agent.config_path import find_path
from agent.dkim_policy import signing_domain, unsigned_refusal
from agent.envelope import END, Envelope, encode_header
from agent.errors import EX_TEMPFAIL, AgentError, MessageError, PolicyError, TempError, TooBigError
from agent.sendmail_args import Options, parse

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~14 ms
if TYPE_CHECKING:
    from typing import BinaryIO

# A message is held as a list of CRLF parts, the first holding all its header fields (which
# headers' functions then read and edit as if it were the whole message). Up to CHUNK it is
# one part, read and made CRLF whole; a bigger one is read, made CRLF and split a chunk at a
# time (agent.sendmail_message, imported only then), so it is never held twice.
CHUNK = 1 << 16


class Runtime:
    """What sendmail needs from the config (see agent.digest.build)."""

    __slots__ = (
        "aliases",
        "default_from",
        "dkim_domains",
        "hostname",
        "local_names",
        "maildrop",
        "max_message_size",
        "min_free",
        "rewrite_local",
        "socket",
        "unsigned",
    )

    def __init__(self, d: dict[str, object]) -> None:
        self.maildrop = str(d["maildrop"])
        self.min_free = _int(d["min_free"])
        self.max_message_size = _int(d["max_message_size"])
        self.socket = str(d["socket"])
        self.default_from = str(d["default_from"])
        self.rewrite_local = bool(d["rewrite_local"])
        raw_aliases = d["aliases"]
        self.aliases = (
            {str(k): str(v) for k, v in raw_aliases.items()} if isinstance(raw_aliases, dict) else {}
        )
        raw_domains = d["dkim_domains"]
        self.dkim_domains = [str(x) for x in raw_domains] if isinstance(raw_domains, list) else []
        self.unsigned = str(d["unsigned"])
        self.hostname = str(d["hostname"]) or posix.uname().nodename
        self.local_names = addressing.local_names(self.hostname)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def load_runtime(cli_path: str | None) -> Runtime:
    """A fresh digest when there is one; otherwise parse the TOML and try to leave a digest."""
    path = find_path(cli_path)
    fast = digest.load(path)
    if fast is not None:
        return Runtime(fast)
    from agent import config  # the slow path: tomllib, dataclasses, socket

    try:
        st: posix.stat_result | None = posix.stat(path)
    except OSError:
        st = None
    cfg = config.load(cli_path)
    if st is not None and cfg.path:
        digest.write(cfg, st)
    return Runtime(digest.build(cfg, st))


def read_message(stream: "BinaryIO | None", ignore_dots: bool, limit: int) -> list[bytes]:
    """stdin up to EOF, or (without -i) up to a line holding a lone ".", made CRLF (normalize)."""
    first, more = b"", False
    if stream is not None and ignore_dots:
        first = stream.read(CHUNK)
        more = len(first) == CHUNK  # short only at EOF
    elif stream is not None:
        lines: list[bytes] = []
        size = 0
        while size <= limit:
            line = stream.readline(limit + 2 - size)
            if not line or line in (b".\n", b".\r\n", b"."):
                break
            lines.append(line)
            size += len(line)
            if size >= CHUNK:
                more = True
                break
        first = b"".join(lines)
    if more:
        from agent import sendmail_message

        return sendmail_message.read_rest(first, stream, ignore_dots, limit)
    if len(first) > limit:
        raise TooBigError(f"message exceeds the size limit of {limit} bytes (limits.max_message_size)")
    return [normalize(first)]


def normalize(data: bytes) -> bytes:
    """Refuse NUL bytes, drop an mbox "From " line, make every line end in CRLF (as cleanup does)."""
    if b"\0" in data:
        raise MessageError("message contains NUL bytes")
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1 :]
    return headers.to_crlf(data)


def login_name() -> str:
    import pwd  # here: most runs never ask (see envelope_sender), and the import costs ~0.03 ms

    uid = posix.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def local_sender(rt: Runtime, addr: str) -> str:
    return addressing.rewrite_sender(addr, rt.default_from, rt.rewrite_local, rt.local_names, rt.hostname)


def envelope_sender(rt: Runtime, raw: str | None) -> str:
    """-f/-r (or MAIL FROM) value, else the login name; local senders rewritten."""
    if raw is None and rt.rewrite_local and rt.default_from:
        # the login name, a bare local name, would become default_from: skip the passwd
        # lookup (NSS: nscd's socket, nsswitch.conf, /etc/passwd), ~0.4 ms per message
        return rt.default_from
    return local_sender(rt, login_name() if raw is None else addressing.parse_sender(raw))


def prepare(
    rt: Runtime, message: list[bytes], sender: str, recipients: list[str], full_name: str, extract: bool
) -> list[str]:
    """Final recipients, and the message's first part (its header fields) made final in
    place: -t, aliases, Bcc removal, missing headers, DKIM policy. The rest is not copied."""
    wanted = [a for r in recipients for a in addressing.parse_address_list(r)]
    head = message[0]
    if extract:
        wanted += headers.recipients_for_t(head)
    rcpts = addressing.resolve_all(wanted, rt.aliases, rt.local_names)
    if not rcpts:
        raise MessageError("no recipients (give them as arguments, or use -t with To:/Cc:/Bcc:)")
    head = headers.rewrite_from(headers.strip_bcc(head), lambda addr: local_sender(rt, addr))
    message[0] = headers.add_missing(head, sender, full_name, rt.hostname, time.time())
    if rt.unsigned == "reject":
        domain = headers.from_domain(message[0])
        if signing_domain(domain, rt.dkim_domains) is None:
            raise PolicyError(unsigned_refusal(domain))
    return rcpts


def deliver(
    rt: Runtime, sender: str, rcpts: list[str], message: list[bytes], dsn: tuple[tuple[str, str], ...]
) -> str:
    """Durably queue the message, into the maildrop or through the daemon.

    Whoever may open the 1733 maildrop to fsync it (root, the daemon's user) writes it
    there and pokes the daemon, as Postfix's postdrop does: ~3 ms less than an SMTP
    session in which the daemon cleans up, signs and fsyncs before its 250. Other users
    cannot fsync that directory (only sync(2) would make their rename durable), so they
    hand the message to the daemon while it runs, and use the maildrop only when it is down.
    """
    from agent import maildrop_write  # lazily: not every run writes mail

    if not maildrop_write.can_fsync(rt.maildrop) and hand_over(rt, sender, rcpts, message, dsn):
        return "daemon"
    refuse_unfixable(message)
    maildrop_write.ensure_dir(rt.maildrop)
    pending = maildrop_write.Pending(rt.maildrop, rt.min_free)
    try:
        for part in framed(sender, rcpts, message, dsn):
            pending.write(part)
        pending.commit()
    except BaseException:
        pending.abort()  # e.g. interrupted: no dot-file left behind (a failed write removed it)
        raise
    pickup_trigger.poke(pickup_trigger.fifo_path(rt.socket))
    return "maildrop"


def framed(
    sender: str, rcpts: list[str], message: list[bytes], dsn: tuple[tuple[str, str], ...]
) -> list[bytes]:
    """A maildrop file's bytes (also what the drop socket takes), in the parts the message is
    held in, not copied whole once more; a small message's as one part, for one write."""
    size = sum(map(len, message))
    head = encode_header(Envelope(sender, tuple(rcpts), time.time(), dsn, posix.getuid()), size)
    parts = [head, *message, END]
    return [b"".join(parts)] if len(message) == 1 else parts


def hand_over(
    rt: Runtime, sender: str, rcpts: list[str], message: list[bytes], dsn: tuple[tuple[str, str], ...]
) -> bool:
    """Give the message to the running daemon: on its drop socket in one round trip, else
    (a daemon from before the drop socket, until it restarts) over SMTP.

    False: the maildrop must take it, as no daemon runs, or it went away or fell silent
    during the hand-over (then it may have kept the message too: a duplicate is the price
    of never losing one). A daemon's refusal is an answer: raised, no maildrop.
    """
    from agent import smtp_client_lite  # _socket: only for this path

    try:
        smtp_client_lite.hand_over(
            smtp_client_lite.drop_path(rt.socket), *framed(sender, rcpts, message, dsn)
        )
        return True
    except smtp_client_lite.Lost:
        return False  # not its SMTP socket: the same daemon, hung or gone
    except smtp_client_lite.Unavailable:
        pass
    try:
        smtp_client_lite.submit(rt.socket, rt.hostname, sender, rcpts, message, dsn)
        return True
    except smtp_client_lite.Unavailable:
        return False


def refuse_unfixable(message: list[bytes]) -> None:
    """What the daemon's cleanup would refuse, refused now (exit 65), not at pickup:
    a line over 998 octets it cannot re-encode (a message/* part, a header with no
    place to fold). Messages without long lines, nearly all, skip the import."""
    if len(message) > 1:
        from agent.sendmail_message import longest_line  # a big message: already imported

        long = longest_line(message) > 998
    else:
        long = len(message[0]) > 998 and max(map(len, message[0].split(b"\n"))) > 998
    if long:
        from agent import longlines  # re and email: ~15 ms, so only for such a message

        longlines.make_safe(b"".join(message))


def send(opts: Options, rt: Runtime, stream: "BinaryIO | None") -> int:
    message = read_message(stream, opts.ignore_dots, rt.max_message_size)
    sender = envelope_sender(rt, opts.sender)
    rcpts = prepare(rt, message, sender, list(opts.recipients), opts.full_name, opts.extract)
    deliver(rt, sender, rcpts, message, opts.dsn())
    return 0


def flush(rt: Runtime) -> int:
    from agent import smtp_client_lite

    try:
        reply = smtp_client_lite.flush(rt.socket, rt.hostname)
    except smtp_client_lite.Unavailable:
        raise TempError(f"the relay-agent daemon is not running ({rt.socket}); queue not flushed") from None
    if reply.code // 100 != 2:
        raise smtp_client_lite.error_for_reply(reply)
    return 0


def run(argv: list[str], prog: str) -> int:
    opts = parse(argv, prog)
    if opts.mode == "list":
        import importlib

        mailq_args = list(opts.recipients) + (["--config", opts.config] if opts.config else [])
        return int(importlib.import_module("agent.mailq").main(mailq_args))
    if opts.mode == "newaliases":
        return 0
    rt = load_runtime(opts.config)
    if opts.mode == "flush":
        return flush(rt)
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    if opts.mode == "smtp":
        import gc

        gc.enable()  # the stub turned it off for one message; a session may carry thousands
        from agent.sendmail_bs import serve

        return serve(rt, opts, stdin, sys.stdout.buffer)
    return send(opts, rt, stdin)


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point; every failure is one `sendmail: reason` line on stderr and a sysexit."""
    if argv is None:
        argv = sys.argv[1:]
    if prog is None:
        prog = sys.argv[0] if sys.argv else "sendmail"
    try:
        return run(argv, prog)
    except AgentError as exc:
        code, reason = exc.exit_code, exc.message
    except KeyboardInterrupt:
        code, reason = EX_TEMPFAIL, "interrupted; the message was not queued"
    except Exception as exc:  # never lose mail silently: a temporary failure makes the caller retry
        code, reason = EX_TEMPFAIL, f"internal error, message not queued: {type(exc).__name__}: {exc}"
    try:
        sys.stderr.write(f"sendmail: {one_line(reason)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
