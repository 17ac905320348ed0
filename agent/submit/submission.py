"""One submission from `sendmail` or `sendmail -bs`: what it needs from the config, its
sender, final recipients and header fields, and its durable hand-over (maildrop or daemon).

On sendmail's fast path (see agent.submit.sendmail): cheap builtins only, no re, json, tomllib,
socket, email, asyncio, typing or dataclasses.
"""

import posix  # not os: see config_path
import time

from agent.config_path import find_path
from agent.dkim.policy import signing_domain, unsigned_refusal
from agent.errors import MessageError, PolicyError
from agent.mail import addressing, headers
from agent.queue import trigger
from agent.queue.queue_file import END, Envelope, encode_header
from agent.submit import config_cache


class Runtime:
    """What sendmail needs from the config (see agent.submit.config_cache.build)."""

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
    fast = config_cache.load(path)
    if fast is not None:
        return Runtime(fast)
    from agent import config

    try:
        st: posix.stat_result | None = posix.stat(path)
    except OSError:
        st = None
    cfg = config.load(cli_path)
    if st is not None and cfg.path:
        config_cache.write(cfg, st)
    return Runtime(config_cache.build(cfg, st))


def normalize(data: bytes) -> bytes:
    """Refuse NUL bytes, drop an mbox "From " line, make every line end in CRLF (as cleanup does)."""
    if b"\0" in data:
        raise MessageError("message contains NUL bytes")
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1 :]
    return headers.to_crlf(data)


def login_name() -> str:
    import pwd  # here: most runs never ask (see envelope_sender), so most never pay its import

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
        # lookup (NSS: nscd's socket, nsswitch.conf, /etc/passwd), a cost on every message
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
) -> None:
    """Durably queue the message, into the maildrop or through the daemon.

    Whoever may open the 1733 maildrop to fsync it (root, the daemon's user) writes it
    there and pokes the daemon, as Postfix's postdrop does: quicker than an SMTP
    session in which the daemon cleans up, signs and fsyncs before its 250. Other users
    cannot fsync that directory (only sync(2) would make their rename durable), so they
    hand the message to the daemon while it runs, and use the maildrop only when it is down.
    """
    from agent.queue import maildrop_write

    if not maildrop_write.can_fsync(rt.maildrop) and hand_over(rt, sender, rcpts, message, dsn):
        return
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
    trigger.poke(trigger.fifo_path(rt.socket))


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
    from agent.submit import socket_client

    try:
        socket_client.hand_over(socket_client.drop_path(rt.socket), *framed(sender, rcpts, message, dsn))
        return True
    except socket_client.Lost:
        return False  # not its SMTP socket: the same daemon, hung or gone
    except socket_client.Unavailable:
        pass
    try:
        socket_client.submit(rt.socket, rt.hostname, sender, rcpts, message, dsn)
        return True
    except socket_client.Unavailable:
        return False


def refuse_unfixable(message: list[bytes]) -> None:
    """What the daemon's cleanup would refuse, refused now (exit 65), not at pickup:
    a line over 998 octets it cannot re-encode (a message/* part, a header with no
    place to fold). Messages without long lines, nearly all, skip the import."""
    if len(message) > 1:
        from agent.submit.stdin_message import longest_line  # a big message: already imported

        long = longest_line(message) > 998
    else:
        long = len(message[0]) > 998 and max(map(len, message[0].split(b"\n"))) > 998
    if long:
        from agent.mail import longlines

        longlines.make_safe(b"".join(message))
