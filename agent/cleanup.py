"""cleanup: validate → fix headers → make long lines safe → policy → DKIM-sign once → queue.

Every way into the queue (SMTP on the socket or loopback, maildrop pickup,
bounces) passes through `Cleanup.prepare` and is signed once before it is
written, so every retry sends the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent import addressing, headers, longlines
from agent.config import Config
from agent.dkim_policy import unsigned_refusal
from agent.dkim_sign import Draft, Signer, signed
from agent.envelope import Envelope, has_bad_chars
from agent.errors import MessageError, PolicyError, TooBigError
from agent.queue import Queue, new_id


@dataclass(frozen=True)
class Prepared:
    """A message that passed cleanup: everything decided, only the private-key
    step of its DKIM signatures and the durable write still to do."""

    qid: str
    envelope: Envelope
    body: bytes
    drafts: tuple[Draft, ...]

    def message(self) -> bytes:
        return signed(self.body, self.drafts)


class Cleanup:
    def __init__(self, cfg: Config, signer: Signer, queue: Queue) -> None:
        self.cfg = cfg
        self.signer = signer
        self.queue = queue
        self.local_names = addressing.local_names(cfg.hostname)

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
    ) -> Prepared:
        """Everything of accepting a message but signing and writing (raises for what it
        refuses, NoSpaceError first when the queue's file system is short of space)."""
        self.queue.check_space()
        now = time.time() if now is None else now
        qid = qid or new_id(now)
        sender, rcpts = self.screen(sender, recipients, message)
        body = headers.to_crlf(message)
        body = headers.rewrite_from(body, self._local_from)
        body = headers.add_missing(body, sender or self.mailer_daemon(), "", self.cfg.hostname, now)
        body = longlines.make_safe(body)
        body = self._received(qid, uid, origin, now) + body
        return Prepared(qid, Envelope(sender, tuple(rcpts), now, dsn, uid), body, self._drafts(body))

    def screen(self, sender: str, recipients: Sequence[str], message: bytes) -> tuple[str, list[str]]:
        """The envelope's refusals, cheap ones first (the drop socket answers with them before
        storing anything): the sender rewritten and the recipients resolved, deduplicated."""
        if len(message) > self.cfg.limits.max_message_size:
            raise TooBigError(f"message exceeds the size limit of {self.cfg.limits.max_message_size} bytes")
        if b"\0" in message:
            raise MessageError("message contains NUL bytes")
        rcpts: list[str] = []
        for r in recipients:
            for resolved in self.recipient(r):
                if resolved not in rcpts:
                    rcpts.append(resolved)
        if not rcpts:
            raise MessageError("no recipients")
        return (self.sender(sender) if sender else ""), rcpts

    def _drafts(self, message: bytes) -> tuple[Draft, ...]:
        domain = headers.from_domain(message)
        if self.signer.has_key_for(domain):
            return self.signer.drafts(message, domain)
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

    def mailer_daemon(self) -> str:
        domain = self.cfg.sender.default_from.rpartition("@")[2] or self.cfg.hostname
        return f"MAILER-DAEMON@{domain}"
