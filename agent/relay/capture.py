"""The last hop in capture mode (staging, CI): each message written into a Maildir, never relayed.

It stands where a RelayConnection stands, with the same calls, and never opens a socket. What
lands in `capture_dir/new/` is what would have followed DATA (the queued bytes: cleaned,
DKIM-signed, not dot-stuffed) after three kinds of header a local delivery agent adds:
`Return-Path`, `X-Relay-Agent-Account` and one `X-Original-To` per recipient. DKIM does not sign
them, so the file verifies as it is.

Each file is written in `tmp/` through durable.Writer (fsync, rename into `new/`, fsync `new/`):
once a recipient counts as sent, its file survives a crash, as a relay's 250 would. A big
message is copied from its queue file a chunk at a time; the writes run on one thread of their
own, so an fsync never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from agent import durable
from agent.config.accounts import DEFAULT
from agent.mail.smtp_text import clean_line
from agent.queue.message_source import MessageSource
from agent.queue.queue_file import Envelope
from agent.relay.failures import RelayError
from agent.relay.results import RcptResult, TxResult

RELAY = "capture"  # the log line's relay=
SUBDIRS = ("tmp", "new", "cur")

_counter = itertools.count(1)
_writer: ThreadPoolExecutor | None = None


def _thread() -> ThreadPoolExecutor:
    """One thread for every capture: the writes are fsync-bound, and more threads running Python
    would only contend with the event loop."""
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
    return _writer


def make_maildir(directory: str) -> None:
    """capture_dir with tmp/ new/ cur/ (0700 when created here); made durable before use."""
    made = [d for d in (directory, *(os.path.join(directory, s) for s in SUBDIRS)) if not os.path.isdir(d)]
    for path in made:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # whatever the umask
    for path in {durable.dirname(p) for p in made}:
        durable.fsync_dir(path)


def file_name() -> str:
    """A Maildir unique name: seconds, microseconds, pid, a per-process count, random, host."""
    now = time.time()
    host = os.uname().nodename.replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(_counter)}R{os.urandom(4).hex()}.{host}"


def prepended(sender: str, account: str, recipients: Sequence[str]) -> bytes:
    """The headers put before the message, as a local delivery agent puts them."""
    lines = [f"Return-Path: <{clean_line(sender)}>", f"X-Relay-Agent-Account: {clean_line(account)}"]
    lines += [f"X-Original-To: <{clean_line(rcpt)}>" for rcpt in recipients]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def write_message(directory: str, head: bytes, message: MessageSource) -> str:
    """The file written and in new/ durably; its name. Blocking: for the capture thread."""
    make_maildir(directory)
    name = file_name()
    writer = durable.Writer(os.path.join(directory, "tmp", name))
    try:
        writer.write(head)
        for chunk in message.chunks():  # a big message: 64 KiB at a time from its queue file
            writer.write(chunk)
        writer.commit(os.path.join(directory, "new", name))
    except BaseException:
        writer.discard()
        raise
    return name


class CaptureConnection:
    """A RelayConnection look-alike whose transactions write `directory` (a Maildir)."""

    relay = RELAY
    tls_version: str | None = None

    def __init__(self, directory: str, account: str = DEFAULT) -> None:
        self.directory = directory
        self.account = account

    @property
    def usable(self) -> bool:
        """Never reused: a worker makes a new hop for each message, so a reload back to relay mode
        (or to another capture_dir) applies to the very next one."""
        return False

    async def connect(self, progress: Callable[[str, str], None] | None = None) -> None:
        """Nothing to connect to; the Maildir is made (if need be) with the first message."""

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes | MessageSource,
        dsn: Mapping[str, str] | None = None,
        before_mail: Callable[[], Awaitable[None]] | None = None,
        account: str | None = None,
    ) -> TxResult:
        """One message into new/, paced like a transaction; every recipient sent. A Maildir that
        cannot be written is a RelayError: every recipient is deferred, as with a relay that is down."""
        if isinstance(message, bytes):
            message = MessageSource.from_bytes(message)
        if before_mail is not None:
            await before_mail()
        head = prepended(sender, account or self.account, recipients)
        loop = asyncio.get_running_loop()
        try:
            name = await loop.run_in_executor(_thread(), write_message, self.directory, head, message)
        except OSError as exc:
            why = f"cannot capture into {self.directory}: {exc.strerror or exc}"
            if exc.filename and exc.filename != self.directory:
                why += f" ({exc.filename})"
            raise RelayError("capture", why, RELAY, names_relay=True) from None
        reply = f"captured: {name}"  # the log line's status=sent (captured: NAME)
        return TxResult(tuple(RcptResult(r, "sent", reply) for r in recipients), RELAY)

    async def capture(
        self,
        env: Envelope,
        recipients: Sequence[str],
        message: MessageSource,
        before_mail: Callable[[], Awaitable[None]] | None = None,
    ) -> TxResult:
        """send() for a queued message: its account is the one stored with it."""
        account = getattr(env, "account", None) or self.account
        return await self.send(env.sender, recipients, message, None, before_mail, account)

    async def quit(self) -> None:
        pass

    async def close(self) -> None:
        pass
