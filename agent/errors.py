"""The few exception types relay-agent raises, each mapped to one sysexit.

Kept import-free so the sendmail fast path can use it.
"""

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class AgentError(Exception):
    """Base: a one-line, user-facing message and the exit status it maps to."""

    exit_code = EX_SOFTWARE
    smtp_code = 451
    smtp_status = "4.3.0"

    def __init__(self, message: str) -> None:
        if not message.isprintable():  # user input quoted in it: still one line, no terminal codes
            message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        super().__init__(message)
        self.message = message

    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.smtp_status} {self.message}"


class UsageError(AgentError):
    exit_code = EX_USAGE
    smtp_code = 501
    smtp_status = "5.5.4"


class MessageError(AgentError):
    """The message or an address in it is malformed (NUL bytes, no recipients...)."""

    exit_code = EX_DATAERR
    smtp_code = 554
    smtp_status = "5.6.0"


class TooBigError(MessageError):
    smtp_code = 552
    smtp_status = "5.3.4"


class UnknownRecipientError(AgentError):
    exit_code = EX_NOUSER
    smtp_code = 550
    smtp_status = "5.1.1"


class PolicyError(AgentError):
    """Refused by policy, e.g. the From: domain has no DKIM key."""

    exit_code = EX_NOPERM
    smtp_code = 550
    smtp_status = "5.7.1"


class TempError(AgentError):
    """Try again later: queue unwritable, disk full, daemon busy."""

    exit_code = EX_TEMPFAIL
    smtp_code = 451
    smtp_status = "4.3.0"


class NoSpaceError(TempError):
    smtp_code = 452
    smtp_status = "4.3.1"


class ConfigError(AgentError):
    exit_code = EX_CONFIG
    smtp_code = 451
    smtp_status = "4.3.5"
