"""The queue file format: pure, stdlib-only (no re, no json).

A queue file describes itself and is immutable once entered:

    RELAY-AGENT-QUEUE 1
    created 1700000000.123
    sender a@example.com          (empty after the space: null reverse-path)
    rcpt b@example.net            (one line per recipient, in order)
    notify SUCCESS,FAILURE        (optional DSN parameters: notify, ret, envid)
    uid 1000                      (submitting uid, informational)
    account shop                  (optional: the relay account chosen at cleanup; absent: default)
    domain example.com            (optional: the From: header's domain, lower-cased; absent in
                                  older files and for a From: without one: the sender's counts)
    size 1234
    <blank line>
    <exactly `size` bytes of message, CRLF line endings>
    RELAY-AGENT-END

A file whose last bytes are not the end marker at the offset `size` predicts was
never acknowledged (a crash mid-write) and goes to corrupt/. The state file beside it
is agent.queue.state_file's.
"""

from agent.mail.smtp_text import clean_line

MAGIC = b"RELAY-AGENT-QUEUE 1\n"
END = b"RELAY-AGENT-END\n"
HEADER_SLACK = 1 << 20  # what a file or hand-over may hold beyond the message size limit: the envelope
MAX_HEADER = 1 << 20  # envelope header bytes; more is garbage, not mail
DSN_KEYS = ("notify", "ret", "envid")
DEFAULT_ACCOUNT = "default"  # the [relay] account; a file without an `account` line belongs to it
ACCOUNT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
DOMAIN_CHARS = ACCOUNT_CHARS | frozenset("._")


class FormatError(ValueError):
    """A queue or state file that cannot be trusted."""


def has_bad_chars(addr: str) -> bool:
    return any(c in addr for c in "\r\n\0")


class Envelope:
    """Immutable envelope. A plain class, not a dataclass: `dataclasses` imports
    `re` and `inspect`, which the sendmail fast path cannot afford."""

    __slots__ = ("account", "created", "domain", "dsn", "recipients", "sender", "uid")

    def __init__(
        self,
        sender: str,
        recipients: tuple[str, ...],
        created: float,
        dsn: tuple[tuple[str, str], ...] = (),
        uid: int = -1,
        account: str = DEFAULT_ACCOUNT,
        domain: str = "",
    ) -> None:
        values = (account, created, domain, dsn, recipients, sender, uid)
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)
        self.account: str  # the relay account that sends it (and its bounce)
        self.domain: str  # its From: domain ("" when unknown): what the sender-domain watch holds
        self.sender: str
        self.recipients: tuple[str, ...]
        self.created: float
        self.dsn: tuple[tuple[str, str], ...]
        self.uid: int

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Envelope is immutable")

    def _key(self) -> tuple[object, ...]:
        return (self.sender, self.recipients, self.created, self.dsn, self.uid, self.account, self.domain)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Envelope) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Envelope(sender={self.sender!r}, recipients={self.recipients!r}, created={self.created!r}, "
            f"dsn={self.dsn!r}, uid={self.uid!r}, account={self.account!r}, domain={self.domain!r})"
        )

    def dsn_param(self, key: str) -> str:
        for k, v in self.dsn:
            if k == key:
                return v
        return ""

    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower() if "@" in self.sender else ""

    def from_domain(self) -> str:
        """The domain its mail counts as sent from: the From: header's, else the sender's."""
        return self.domain or self.sender_domain()


def encode(env: Envelope, message: bytes) -> bytes:
    return encode_header(env, len(message)) + message + END


def encode_header(env: Envelope, size: int) -> bytes:
    """The envelope header block and its blank line, for a message of `size` bytes that a
    writer streams after it (then END)."""
    if has_bad_chars(env.sender) or any(has_bad_chars(r) for r in env.recipients):
        raise FormatError("address contains CR, LF or NUL")
    lines = [MAGIC, f"created {env.created!r}\n".encode(), b"sender " + env.sender.encode() + b"\n"]
    lines += [b"rcpt " + r.encode() + b"\n" for r in env.recipients]
    lines += [f"{k} {clean_line(v)}\n".encode() for k, v in env.dsn if v]
    if env.uid >= 0:
        lines.append(f"uid {env.uid}\n".encode())
    if env.account != DEFAULT_ACCOUNT:  # absent means default: files of older versions read the same
        if not valid_account(env.account):
            raise FormatError("bad account name")
        lines.append(f"account {env.account}\n".encode())
    if env.domain:
        if not valid_domain(env.domain):
            raise FormatError("bad From: domain")
        lines.append(f"domain {env.domain}\n".encode())
    lines.append(f"size {size}\n\n".encode())
    return b"".join(lines)


def split_header(data: bytes) -> tuple[bytes, int]:
    """The envelope header block and the offset where the message starts."""
    if not data.startswith(MAGIC):
        raise FormatError("not a relay-agent queue file")
    cut = data.find(b"\n\n", 0, MAX_HEADER)
    if cut < 0:
        raise FormatError("envelope header not terminated")
    return data[len(MAGIC) : cut + 1], cut + 2


def parse_header(block: bytes) -> tuple[Envelope, int]:
    """Parse the envelope header block: (envelope, declared message size)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("envelope header is not UTF-8") from None
    sender: str | None = None
    created = 0.0
    size = -1
    uid = -1
    account = DEFAULT_ACCOUNT
    domain = ""
    rcpts: list[str] = []
    dsn: list[tuple[str, str]] = []
    for line in text.split("\n")[:-1]:
        key, _, value = line.partition(" ")
        if "\r" in line or "\0" in line:
            raise FormatError("control character in envelope header")
        if key == "sender":
            sender = value
        elif key == "rcpt":
            if not value:
                raise FormatError("empty recipient")
            rcpts.append(value)
        elif key == "created":
            created = read_float(value)
        elif key == "size":
            size = read_int(value)
        elif key == "uid":
            uid = read_int(value)
        elif key in DSN_KEYS:
            dsn.append((key, value))
        elif key == "account":
            if not valid_account(value):
                raise FormatError(f"bad account name {value[:20]!r}")
            account = value
        elif key == "domain":
            if not valid_domain(value):
                raise FormatError(f"bad From: domain {value[:20]!r}")
            domain = value
        else:
            raise FormatError(f"unknown envelope field {key[:20]!r}")
    if sender is None or size < 0 or not rcpts:
        raise FormatError("envelope header lacks sender, size or recipients")
    return Envelope(sender, tuple(rcpts), created, tuple(dsn), uid, account, domain), size


def valid_account(name: str) -> bool:
    """An account name as the config allows it: [a-z0-9-]+ (no `re`: the fast path imports this)."""
    return bool(name) and len(name) <= 64 and ACCOUNT_CHARS.issuperset(name)


def valid_domain(name: str) -> bool:
    """A lower-case DNS name in ASCII (an IDN as its A-label); no `re`, as for valid_account."""
    return bool(name) and len(name) <= 253 and DOMAIN_CHARS.issuperset(name)


def read_float(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise FormatError(f"bad number {value[:20]!r}") from None
    if n != n or n < -1 or n > 1e15:  # NaN, inf and absurd values
        raise FormatError(f"bad number {value[:20]!r}")
    return n


def read_int(value: str) -> int:
    if not value.lstrip("-").isdigit() or len(value) > 16:
        raise FormatError(f"bad number {value[:20]!r}")
    return int(value)


def decode(data: bytes) -> tuple[Envelope, bytes]:
    """Parse a whole queue file; raises FormatError for anything incomplete."""
    block, start = split_header(data)
    env, size = parse_header(block)
    if len(data) != start + size + len(END) or not data.endswith(END):
        raise FormatError("queue file is incomplete (no end marker)")
    return env, data[start : start + size]
