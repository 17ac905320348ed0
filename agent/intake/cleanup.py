"""cleanup: validate → fix headers → make long lines safe → policy → DKIM-sign once → queue.

Every way into the queue (SMTP on the socket or loopback, maildrop pickup,
bounces) passes through `Cleanup.prepare` (a message in memory) or
`Cleanup.prepare_stream` (a big one, read a chunk at a time: agent.intake.bodystream) and is
signed once before it is written, so every retry sends the same bytes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.config import Config
from agent.dkim.body_hash import RelaxedBodyHash
from agent.dkim.policy import unsigned_refusal
from agent.dkim.signing import Draft, Signer, signed
from agent.durable import write_all
from agent.errors import MessageError, PolicyError, TooBigError
from agent.intake import bodystream, heap
from agent.mail import addressing, headers, longlines
from agent.queue.ids import new_id
from agent.queue.queue_file import DEFAULT_ACCOUNT, Envelope, has_bad_chars, valid_domain
from agent.queue.spool import SMALL, SUFFIX, Spool, Spooled, create, unlink_quiet
from agent.queue.store import Queue

# A big message whose body has lines over 998 octets is re-encoded whole in memory
# (longlines works on the whole MIME tree); this lets only one such message be in memory at a
# time, whatever the number of clients, so the daemon's memory stays bounded.
_WHOLE = threading.BoundedSemaphore(1)


@dataclass(frozen=True)
class Prepared:
    """A message that passed cleanup: everything decided, only the private-key
    step of its DKIM signatures and the durable write still to do. A big message's body is
    in the spool file `spool`, which the commit removes (or `discard()`)."""

    qid: str
    envelope: Envelope
    body: bytes  # the whole message; with a spool, its header block (and blank line)
    drafts: tuple[Draft, ...]
    spool: Spool | None = None
    hold: tuple[str, str] | None = None  # (held_for, reason): entered held, e.g. over its quota

    def message(self) -> bytes:
        return signed(self.body, self.drafts)

    def content(self) -> bytes | Spooled:
        """What the queue file holds: the signed message, or its head and the spooled body."""
        return self.message() if self.spool is None else Spooled(self.message(), self.spool)

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()


class Cleanup:
    def __init__(self, cfg: Config, signer: Signer, queue: Queue) -> None:
        self.cfg = cfg
        self.signer = signer
        self.queue = queue
        self.local_names = addressing.local_names(cfg.hostname)
        # From: domain -> (held_for, reason) while the daemon's sender-domain watch holds its mail
        self.held_domains: Mapping[str, tuple[str, str]] = {}

    def recipient(self, addr: str) -> list[str]:
        """Aliases applied; raises UnknownRecipientError / MessageError."""
        if has_bad_chars(addr):
            raise MessageError("address contains CR, LF or NUL")
        return addressing.resolve_recipient(addr, self.cfg.aliases, self.local_names)

    def sender(self, addr: str) -> str:
        if has_bad_chars(addr):
            raise MessageError("address contains CR, LF or NUL")
        s = self.cfg.sender
        return addressing.rewrite_sender(
            addr, s.default_from, s.rewrite_local, self.local_names, self.cfg.hostname
        )

    def prepare(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        uid: int = -1,
        dsn: tuple[tuple[str, str], ...] = (),
        origin: str = "local",
        qid: str = "",
        now: float | None = None,
        account: str = "",
    ) -> Prepared:
        """Everything of accepting a message but signing and writing (raises for what it
        refuses, NoSpaceError first when the queue's file system is short of space). `account`:
        the relay account that sends it (a bounce: the failed message's); else chosen here."""
        self.queue.check_space()
        now = time.time() if now is None else now
        qid = qid or new_id(now)
        sender, rcpts = self.screen(sender, recipients, message)
        body = self._fix_headers(headers.to_crlf(message), sender, now)
        body = longlines.make_safe(body)
        account = account or self.account_for(body, sender)
        body = self._received(qid, uid, origin, now) + body
        env = Envelope(sender, tuple(rcpts), now, dsn, uid, account, message_domain(body))
        return Prepared(qid, env, body, self._drafts(body), hold=self.domain_hold(env))

    def prepare_spool(
        self,
        sender: str,
        recipients: Sequence[str],
        data: Spool,
        *,
        uid: int = -1,
        dsn: tuple[tuple[str, str], ...] = (),
        origin: str = "local",
    ) -> Prepared:
        """prepare_stream() of SMTP's spooled DATA, which is removed afterwards in any case."""
        try:
            fd = os.open(data.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                read = bodystream.file_reader(fd, 0, data.size)
                return self.prepare_stream(
                    sender, recipients, read, data.size, uid=uid, dsn=dsn, origin=origin
                )
            finally:
                os.close(fd)
        finally:
            data.discard()

    def prepare_stream(
        self,
        sender: str,
        recipients: Sequence[str],
        read: bodystream.Read,
        size: int,
        *,
        uid: int = -1,
        dsn: tuple[tuple[str, str], ...] = (),
        origin: str = "local",
        qid: str = "",
        now: float | None = None,
    ) -> Prepared:
        """prepare() of a message of `size` bytes read a chunk at a time (blocking: run it in a
        thread): its header block in memory, its body streamed into tmp/QID.spool."""
        self.queue.check_space()
        now = time.time() if now is None else now
        qid = qid or new_id(now)
        if size > self.cfg.limits.max_message_size:
            raise TooBigError(f"message exceeds the size limit of {self.cfg.limits.max_message_size} bytes")
        sender, rcpts = self.screen_envelope(sender, recipients)
        crlf = bodystream.Crlf()
        head = bodystream.read_head(read, crlf)
        fixed = self._fix_headers(head.head, sender, now)
        account = self.account_for(fixed, sender)
        env = Envelope(sender, tuple(rcpts), now, dsn, uid, account, message_domain(fixed))
        path = os.path.join(self.queue.tmp, qid + SUFFIX)
        body = bodystream.spool_body(head.rest, read, crlf, path)
        received = self._received(qid, uid, origin, now)
        try:
            if body.long_lines or not head.blank:
                try:
                    return self._whole(qid, env, received, fixed, Spool(path, body.size))
                finally:
                    heap.give_back_memory()
            top = received + longlines.make_safe(fixed)
            drafts = self._drafts(top, body.body_hash)
            return Prepared(qid, env, top, drafts, Spool(path, body.size), self.domain_hold(env))
        except BaseException:
            unlink_quiet(path)
            raise

    def _whole(self, qid: str, env: Envelope, received: bytes, fixed: bytes, body: Spool) -> Prepared:
        """A streamed message that must be made safe whole (long lines, or no blank line after
        its header): in memory, one at a time (_WHOLE), its body then spooled again."""
        with _WHOLE:
            with open(body.path, "rb") as fh:
                message = received + longlines.make_safe(fixed + fh.read())
            unlink_quiet(body.path)
            cut = message.find(b"\r\n\r\n") + 4
            if cut < 4 or len(message) <= SMALL:
                return Prepared(qid, env, message, self._drafts(message), hold=self.domain_hold(env))
            hasher = RelaxedBodyHash()
            fd = create(body.path)
            try:
                write_all(fd, memoryview(message)[cut:])
            finally:
                os.close(fd)
            for start in range(cut, len(message), bodystream.CHUNK):
                hasher.update(message[start : start + bodystream.CHUNK])
            top = message[:cut]
            spooled = Spool(body.path, len(message) - cut)
            return Prepared(qid, env, top, self._drafts(top, hasher.digest()), spooled, self.domain_hold(env))

    def _fix_headers(self, message: bytes, sender: str, now: float) -> bytes:
        message = headers.rewrite_from(message, self._local_from)
        return headers.add_missing(message, sender or self.mailer_daemon(), "", self.cfg.hostname, now)

    def screen(self, sender: str, recipients: Sequence[str], message: bytes) -> tuple[str, list[str]]:
        """The envelope's refusals, cheap ones first (the drop socket answers with them before
        storing anything): the sender rewritten and the recipients resolved, deduplicated."""
        if len(message) > self.cfg.limits.max_message_size:
            raise TooBigError(f"message exceeds the size limit of {self.cfg.limits.max_message_size} bytes")
        if b"\0" in message:
            raise MessageError("message contains NUL bytes")
        return self.screen_envelope(sender, recipients)

    def screen_envelope(self, sender: str, recipients: Sequence[str]) -> tuple[str, list[str]]:
        """The sender rewritten and the recipients resolved, deduplicated in order (a dict:
        a header block can name tens of thousands, and a list scan would be quadratic)."""
        rcpts: dict[str, None] = {}
        for r in recipients:
            for resolved in self.recipient(r):
                rcpts[resolved] = None
        if not rcpts:
            raise MessageError("no recipients")
        return (self.sender(sender) if sender else ""), list(rcpts)

    def _drafts(self, message: bytes, body_hash: bytes | None = None) -> tuple[Draft, ...]:
        """The signatures' drafts; with `body_hash`, `message` is the header block only."""
        domain = headers.from_domain(message)
        if self.signer.has_key_for(domain):
            return self.signer.drafts(message, domain, body_hash=body_hash)
        if self.cfg.policy.unsigned == "reject":
            raise PolicyError(unsigned_refusal(domain))
        return ()

    def _received(self, qid: str, uid: int, origin: str, now: float) -> bytes:
        who = f"from userid {uid}" if uid >= 0 else f"from {origin}"
        date = headers.format_date(now)
        return f"Received: by {self.cfg.hostname} (relay-agent, {who})\r\n\tid {qid}; {date}\r\n".encode()

    def _local_from(self, addr: str) -> str:
        """A local From: (cron's `root (Cron Daemon)`) gets the same rewrite as the sender."""
        return self.sender(addr) if addressing.is_local(addr, self.local_names) else addr

    def account_for(self, message: bytes, sender: str) -> str:
        """The relay account that sends this message: chosen once, here, and kept with it."""
        if not self.cfg.extra_accounts:
            return DEFAULT_ACCOUNT  # no [[account]]: no header to parse
        return self.cfg.account_for(headers.from_domain(message), sender.rpartition("@")[2])

    def domain_hold(self, env: Envelope) -> tuple[str, str] | None:
        """(held_for, reason) when its From: domain's mail is held (the relay would refuse it)."""
        return self.held_domains.get(env.from_domain()) if self.held_domains else None

    def mailer_daemon(self) -> str:
        domain = self.cfg.sender.default_from.rpartition("@")[2] or self.cfg.hostname
        return f"MAILER-DAEMON@{domain}"


def message_domain(head: bytes) -> str:
    """The From: header's domain as the queue file keeps it ("" when it has none the file can keep)."""
    domain = headers.from_domain(head)
    if domain and not valid_domain(domain):
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return domain if valid_domain(domain) else ""
