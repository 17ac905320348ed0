"""sendmail(8) command-line parsing: pure, stdlib-only (no re, no argparse: startup speed).

getopt semantics as Postfix and sendmail have them: boolean flags may be bundled
(`-ti`), a flag that takes a value takes the rest of its word (`-faddr`, `-oem`,
`-FCronDaemon`) or else the next word. Options may follow recipients (GNU getopt
permutes on Linux) until `--`.
"""

from agent.errors import MessageError, UsageError

# flags that take a value; -o and -b take the rest of their word, -q only an attached one
VALUE_FLAGS = frozenset("frFCBNRVLhXoOb")
BOOL_FLAGS = frozenset("tivGUnmI")
MODES = {"m": "send", "s": "smtp", "p": "list", "i": "newaliases"}
NOTIFY_WORDS = ("success", "failure", "delay")


class Options:
    """The parsed command line; read-only once built."""

    __slots__ = (
        "config",
        "envid",
        "extract",
        "full_name",
        "ignore_dots",
        "mode",
        "notify",
        "recipients",
        "ret",
        "sender",
        "verbose",
    )

    recipients: tuple[str, ...]
    extract: bool
    ignore_dots: bool
    sender: str | None
    full_name: str
    mode: str
    config: str | None
    notify: str
    ret: str
    envid: str
    verbose: bool

    def __init__(self, **values: object) -> None:
        defaults: dict[str, object] = {
            "recipients": (),
            "extract": False,
            "ignore_dots": False,
            "sender": None,
            "full_name": "",
            "mode": "send",
            "config": None,
            "notify": "",
            "ret": "",
            "envid": "",
            "verbose": False,
        }
        defaults.update(values)
        for key, value in defaults.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Options is read-only")

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

    def dsn(self) -> tuple[tuple[str, str], ...]:
        """DSN parameters in agent.queue.queue_file's (key, value) form."""
        pairs = (("notify", self.notify), ("ret", self.ret), ("envid", self.envid))
        return tuple((k, v) for k, v in pairs if v)


def parse(argv: list[str], prog: str = "sendmail") -> Options:
    """Parse the arguments after argv[0]; `prog` is argv[0] (mailq / newaliases by name)."""
    values: dict[str, object] = {}
    base = prog.rpartition("/")[2]
    if base == "mailq":
        return Options(mode="list", recipients=tuple(argv))
    if base == "newaliases":
        values["mode"] = "newaliases"
    recipients: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            recipients += argv[i:]
            break
        if not word.startswith("-") or word == "-":
            recipients.append(word)
            continue
        i = _cluster(word, argv, i, values)
    for word in recipients:
        if any(c in word for c in "\r\n\0"):
            raise MessageError("recipient argument contains CR, LF or NUL")
    values["recipients"] = tuple(part.strip() for word in recipients for part in _split_commas(word))
    return Options(**values)


def _split_commas(word: str) -> list[str]:
    """Split a recipient argument at commas outside quotes and angle brackets."""
    parts, start, quoted, angle = [], 0, False, 0
    for n, c in enumerate(word):
        if c == '"':
            quoted = not quoted
        elif c == "<" and not quoted:
            angle += 1
        elif c == ">" and not quoted and angle:
            angle -= 1
        elif c == "," and not quoted and not angle:
            parts.append(word[start:n])
            start = n + 1
    parts.append(word[start:])
    return [p for p in parts if p.strip()]


def _cluster(word: str, argv: list[str], i: int, values: dict[str, object]) -> int:
    """Handle one `-xyz` word; returns the index of the next unread argument."""
    pos = 1
    while pos < len(word):
        flag = word[pos]
        pos += 1
        if flag in BOOL_FLAGS:
            _bool_flag(flag, values)
        elif flag == "q":
            values["mode"] = "flush"  # -q, -q30m, -qIabc...: all mean "run the queue now"
            return i
        elif flag == "A":  # -Ac / -Am: which of sendmail's configurations; there is one here
            if word[pos:] not in ("", "c", "m"):
                raise UsageError(f"option -A takes c or m, not {word[pos:]!r}")
            return i
        elif flag in VALUE_FLAGS:
            if pos < len(word):
                value = word[pos:]
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                raise UsageError(f"option -{flag} requires a value")
            _value_flag(flag, value, values)
            return i
        else:
            raise UsageError(f"unknown option -{flag}" + (f" (in {word})" if len(word) > 2 else ""))
    return i


def _bool_flag(flag: str, values: dict[str, object]) -> None:
    if flag == "t":
        values["extract"] = True
    elif flag == "i":
        values["ignore_dots"] = True
    elif flag == "v":
        values["verbose"] = True
    elif flag == "I":
        values["mode"] = "newaliases"
    # -G (gateway), -U (initial submission), -n (no aliasing), -m (me too): accepted, no effect


def _value_flag(flag: str, value: str, values: dict[str, object]) -> None:
    if any(c in value for c in "\r\n\0"):
        # an address that cannot be parsed is a data error (65), like any bad message
        raise (MessageError if flag in "fr" else UsageError)(f"option -{flag} value contains CR, LF or NUL")
    if flag in "fr":
        values["sender"] = value
    elif flag == "F":
        values["full_name"] = value
    elif flag == "C":
        values["config"] = value
    elif flag == "b":
        _mode(value, values)
    elif flag in "oO":
        if value == "i":
            values["ignore_dots"] = True
        # -odi/-odb (delivery mode), -oem/-oep/-oee (error mode), -oXxx: accepted and ignored
    elif flag == "N":
        values["notify"] = _notify(value)
    elif flag == "R":
        if value.lower() not in ("full", "hdrs"):
            raise UsageError(f"-R {value}: expected full or hdrs")
        values["ret"] = value.upper()
    elif flag == "V":
        if not value or len(value) > 100 or not all(" " < c < "\x7f" for c in value):
            raise UsageError("-V: the envelope id must be 1-100 printable ASCII characters")
        values["envid"] = value
    # -B TYPE, -L TAG, -h N, -X LOGFILE: accepted, no effect


def _mode(value: str, values: dict[str, object]) -> None:
    mode = MODES.get(value)
    if mode is None:
        raise UsageError(f"-b{value}: mode not supported (supported: -bm -bs -bp -bi)")
    values["mode"] = mode


def _notify(value: str) -> str:
    words = [w.strip().lower() for w in value.split(",")]
    if words == ["never"]:
        return "NEVER"
    if not words or any(w not in NOTIFY_WORDS for w in words):
        raise UsageError(f"-N {value}: expected never or a list of success,failure,delay")
    return ",".join(w.upper() for w in words)
