"""The state file format: a message's mutable delivery state, beside its queue file.

Pure and stdlib-only, like agent.queue.queue_file, and apart from it because sendmail, which
only writes queue files, should not load it. Rewritten atomically after each attempt
(absent = fresh, all recipients pending):

    state deferred                (queued | deferred | failed | held; "hold" read as held)
    attempts 2
    next 1700000060.0
    error 451 4.3.0 try later     (last error, one line; for held mail, why it is held)
    held_for quota nobody         (held mail only: what holds it, so that exactly the mail
                                  held for one reason can be released: manual, quota USER,
                                  dns DOMAIN)
    bounce 1                      (failed recipients whose bounce is not queued yet)
    r 0 S                         (recipient index, P/S/F, optional error)
    r 1 F 550 5.1.1 no such user
"""

from agent.mail.smtp_text import clean_line
from agent.queue.queue_file import FormatError, read_float, read_int

PENDING, SENT, FAILED = "P", "S", "F"
HELD = "held"
OLD_HELD = "hold"  # what `queue hold` wrote before held mail had its reasons
MANUAL = "manual"  # held_for of `queue hold`
DNS_HOLD = "dns "  # + a domain: held_for of mail the sender-domain watch holds


def dns_hold(domain: str) -> str:
    return DNS_HOLD + domain


class State:
    """Mutable delivery state of one message (see the module docstring)."""

    __slots__ = (
        "attempts",
        "bounce_due",
        "failed_at",
        "held_for",
        "last_error",
        "next_attempt",
        "rcpt",
        "state",
    )

    def __init__(
        self,
        state: str = "queued",
        attempts: int = 0,
        next_attempt: float = 0.0,
        last_error: str = "",
        failed_at: float = 0.0,
        rcpt: dict[int, tuple[str, str]] | None = None,
        bounce_due: list[int] | None = None,
        held_for: str = "",
    ) -> None:
        self.state = state
        self.attempts = attempts
        self.next_attempt = next_attempt
        self.last_error = last_error
        self.failed_at = failed_at
        self.rcpt: dict[int, tuple[str, str]] = {} if rcpt is None else rcpt
        # failed recipients whose bounce is not queued yet (the queue was full)
        self.bounce_due: list[int] = [] if bounce_due is None else bounce_due
        self.held_for = held_for

    @property
    def held(self) -> bool:
        """Kept from delivery until released (`queue hold`, a submitter's quota, a broken domain)."""
        return self.state in (HELD, OLD_HELD)

    def hold(self, held_for: str, reason: str) -> None:
        """Held for `held_for` (MANUAL, "quota USER", "dns DOMAIN"); `reason` is what listings show."""
        self.state = HELD
        self.held_for = held_for
        self.last_error = reason

    def release(self) -> None:
        """Back to the queue, due now; what it had already sent or failed stays recorded."""
        self.state = "queued"
        self.held_for = ""
        self.last_error = ""
        self.next_attempt = 0.0

    def _key(self) -> tuple[object, ...]:
        return (
            self.state,
            self.attempts,
            self.next_attempt,
            self.last_error,
            self.failed_at,
            self.rcpt,
            self.bounce_due,
            self.held_for,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"State{self._key()!r}"

    def copy(self) -> "State":
        return State(
            self.state,
            self.attempts,
            self.next_attempt,
            self.last_error,
            self.failed_at,
            dict(self.rcpt),
            list(self.bounce_due),
            self.held_for,
        )

    def rcpt_state(self, index: int) -> str:
        return self.rcpt.get(index, (PENDING, ""))[0]

    def rcpt_error(self, index: int) -> str:
        return self.rcpt.get(index, (PENDING, ""))[1]

    def pending(self, count: int) -> list[int]:
        return [i for i in range(count) if self.rcpt_state(i) == PENDING]


STATES = ("queued", "deferred", "failed", HELD, OLD_HELD)


def encode_state(state: State) -> bytes:
    lines = [
        f"state {HELD if state.held else state.state}",
        f"attempts {state.attempts}",
        f"next {state.next_attempt!r}",
        f"failed_at {state.failed_at!r}",
    ]
    if state.last_error:
        lines.append("error " + clean_line(state.last_error))
    if state.held and state.held_for:
        lines.append("held_for " + clean_line(state.held_for))
    if state.bounce_due:
        lines.append("bounce " + " ".join(str(i) for i in state.bounce_due))
    for i in sorted(state.rcpt):
        s, err = state.rcpt[i]
        lines.append(f"r {i} {s} {clean_line(err)}".rstrip())
    return ("\n".join(lines) + "\n").encode()


def decode_state(data: bytes) -> State:
    state = State()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("state file is not UTF-8") from None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "state":
            if value not in STATES:
                raise FormatError(f"unknown state {value[:20]!r}")
            state.state = HELD if value == OLD_HELD else value
        elif key == "attempts":
            state.attempts = read_int(value)
        elif key == "next":
            state.next_attempt = read_float(value)
        elif key == "failed_at":
            state.failed_at = read_float(value)
        elif key == "bounce":
            state.bounce_due = [read_int(i) for i in value.split()]
        elif key == "error":
            state.last_error = value
        elif key == "held_for":
            state.held_for = value
        elif key == "r":
            idx, _, rest = value.partition(" ")
            s, _, err = rest.partition(" ")
            if s not in (PENDING, SENT, FAILED):
                raise FormatError("bad recipient state")
            state.rcpt[read_int(idx)] = (s, err)
        elif key:
            raise FormatError(f"unknown state field {key[:20]!r}")
    return state
