"""The drop socket (`<socket>.drop`): postdrop for users who cannot fsync the maildrop.

A 1733 maildrop is not readable by other users, so they cannot open it to fsync a
rename (PHP-FPM, most cron jobs). They write the bytes they would have put there
(agent.queue.queue_file's format) to this socket, shut down their side and read one reply
line. The daemon stores them in the maildrop as root's sendmail would (temp file,
fsync, rename, fsync the directory), answers 250 with the queue id pickup will give
the file, and wakes pickup, which cleans up, signs and queues it like any maildrop
file. The client waits for one durable write, not for cleanup, DKIM and the queue's
own commit, and the event loop is not in its path.

The bytes are untrusted input: the envelope header is parsed and put through cleanup's
envelope checks (recipients against [aliases], sender; size from its `size` line) before
anything is written, and the message is streamed into the file with the maildrop's size
limit and NUL check applied as it passes (agent.intake.drop_handover). The uid comes from
SO_PEERCRED; the file's uid line is rewritten with it, and pickup trusts a uid line only
in files the daemon itself owns (see pickup.submitter).

Any local user can connect, so no client may hold anything for long: one thread reads every
connection (non-blocking, a selector), and a slow client costs a descriptor and its
envelope header, never a thread. Worker threads get only bounded work: the envelope
checks and the durable write. Every hand-over must be read within DEADLINE; there are at
most `cap` at once (FdBudget), and past that a client gets 421 at once and uses the
maildrop. Out of descriptors, accepting pauses and one line is logged per episode.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from agent.errors import AgentError
from agent.intake import listen_guard, quotas
from agent.intake.cleanup import Cleanup
from agent.intake.drop_handover import MALFORMED, Handover, Stage, refusal
from agent.intake.listen_guard import DROP_HANDOVERS, OUT_OF_FDS, Episode
from agent.intake.pickup import shown
from agent.intake.smtp_server import socket_peer_uid
from agent.queue import queue_file
from agent.queue.ids import qid_for

log = logging.getLogger("relay-agent")

# A whole hand-over, connect to EOF: sendmail writes even a message at the size limit over a
# local socket in well under a second, so this only ever cuts off a stalled or hostile
# client; and it is well inside sendmail's own wait for the reply, so a slow but honest
# client gets the 421 and uses the maildrop rather than giving up on its own.
DEADLINE = 30.0
WORKERS = 4  # envelope checks and durable writes: no client is ever in their path
CHUNK = 1 << 16
ACCEPT_BATCH = 64  # accepts per wakeup, so that reading the others is not held up
ACCEPT_PAUSE = 1.0  # out of descriptors: try accepting again after this (as asyncio does)
SWEEP = 0.25  # how often deadlines are checked
HEADER_BUDGET = 16 << 20  # envelope headers being read, all connections together
STOP_WAIT = 1.0  # at shutdown, for hand-overs in progress (one durable write each): the
# deliveries' drain (daemon.DRAIN_SECONDS) must still fit in systemd's 10 s after it
BUSY = "421 4.3.2 too many hand-overs at once; try again later"
LATE = "421 4.4.2 hand-over not finished in time"
CLOSING = "421 4.3.2 shutting down; try again later"
INTERNAL = "451 4.3.0 internal error; try again later"

Result = tuple[Handover, "str | None"]  # a worker's outcome: the reply, or None to read on
READING = frozenset({Stage.HEAD, Stage.BODY, Stage.DRAIN})


class DropServer:
    """Serves a bound, listening AF_UNIX socket until close()."""

    def __init__(
        self,
        sock: socket.socket,
        cleanup: Callable[[], Cleanup],
        dropped: Callable[[], object],
        cap: int = DROP_HANDOVERS,
        out_of_fds: Episode | None = None,
        deadline: float = DEADLINE,
    ) -> None:
        self.sock = sock
        self.cleanup = cleanup  # the current one: a reload replaces config, aliases and key
        self.dropped = dropped  # wakes pickup; must be safe to call from any thread
        self.cap = cap
        self.deadline = deadline
        self.out_of_fds = out_of_fds or listen_guard.out_of_fds()
        self.full = Episode("too many drop-socket hand-overs at once, new ones get 421")
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="drop")
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.done: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.handovers: set[Handover] = set()
        self.header_bytes = 0
        self.resume_at = 0.0  # when accepting pauses for want of descriptors
        self.closing = False
        for s in (sock, self.wake_r, self.wake_w):
            s.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, name="drop-io", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """No new hand-overs. Those in progress get STOP_WAIT seconds to finish (each is one
        durable write); a client still sending after that is cut off, and nothing of its
        message is stored, so the daemon still stops within systemd's 10 s."""
        self.closing = True
        self._wake()
        self.thread.join(2 * STOP_WAIT + 1)
        self.pool.shutdown(wait=True, cancel_futures=True)
        while not self.done.empty():  # finished after the thread stopped: nobody will reply
            self.done.get()[0].abort()
        for s in (self.wake_r, self.wake_w):
            s.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wakeup is pending anyway
            self.wake_w.send(b"\0")

    # -- the I/O thread -------------------------------------------------------------
    def _run(self) -> None:
        next_sweep = 0.0
        stop_at = 0.0
        while True:
            for key, _ in self.sel.select(SWEEP):
                try:
                    self._ready(key.fileobj, key.data)
                except Exception:  # a bug must cost one hand-over, not the drop socket
                    log.exception("drop socket: unexpected error")
                    if isinstance(key.data, Handover) and not key.data.dead:
                        self._finish(key.data, INTERNAL)
            now = time.monotonic()
            if self.closing and not stop_at:
                stop_at = now + STOP_WAIT
                self._stop_accepting()
            if self.resume_at and now >= self.resume_at and not self.closing:
                self.resume_at = 0.0
                self.sel.register(self.sock, selectors.EVENT_READ)
            if now >= next_sweep or stop_at:
                next_sweep = now + SWEEP
                self._sweep(now, stop_at)
            if stop_at and (not self.handovers or now >= stop_at + STOP_WAIT):
                break
        for h in list(self.handovers):
            self._finish(h, None)
        self.sel.close()

    def _ready(self, obj: object, h: Handover | None) -> None:
        if h is not None:  # one of the hand-overs
            self._readable(h)
        elif obj is self.sock:
            self._accept()
        else:
            with contextlib.suppress(OSError):
                self.wake_r.recv(4096)
            while not self.done.empty():
                self._completed(*self.done.get())

    def _stop_accepting(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _sweep(self, now: float, stop_at: float) -> None:
        """Cut off what is past its deadline (at shutdown, past STOP_WAIT). A durable write in
        progress is our own bounded work: cut off only when shutdown cannot wait any longer."""
        for h in list(self.handovers):
            if h.stage is Stage.COMMIT:
                if stop_at and now >= stop_at + STOP_WAIT:
                    self._finish(h, None)
            elif h.stage is Stage.DRAIN and now >= min(h.deadline, stop_at or h.deadline):
                self._finish(h, h.final_refusal())
            elif now >= h.deadline:
                self._finish(h, LATE)
            elif stop_at and now >= stop_at:
                self._finish(h, CLOSING)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in OUT_OF_FDS:
                    self.out_of_fds.hit(f"{exc.strerror}; the drop socket pauses accepting")
                    self.sel.unregister(self.sock)
                    self.resume_at = time.monotonic() + ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if len(self.handovers) >= self.cap:
            self.full.hit(f"{len(self.handovers)} in progress, the cap")
            _reply(conn, BUSY)
            return
        uid = socket_peer_uid(conn)
        if uid < 0:  # never seen on Linux; without it the file could not name its submitter
            _reply(conn, "451 4.3.0 cannot tell who is submitting; try again later")
            return
        h = Handover(conn, uid, self.cleanup().cfg.limits.max_message_size, time.monotonic() + self.deadline)
        self.handovers.add(h)
        self.sel.register(conn, selectors.EVENT_READ, h)

    def _readable(self, h: Handover) -> None:
        if h.stage not in READING:
            return  # finished or handed to a worker by an earlier event of the same wakeup
        try:
            chunk = h.conn.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._finish(h, None)  # the client went away: nothing is stored
            return
        if not chunk:
            self._eof(h)
            return
        h.received += len(chunk)
        try:
            self._feed(h, chunk)
        except Exception as exc:
            self._refuse(h, refusal(exc))

    def _feed(self, h: Handover, chunk: bytes) -> None:
        if h.stage is Stage.DRAIN:
            if h.drained():
                self._finish(h, h.final_refusal())
        elif h.stage is Stage.BODY:
            h.body(chunk)
        elif self.header_bytes + len(chunk) > HEADER_BUDGET:
            self._refuse(h, BUSY)
        elif h.head(chunk):
            self._count(h, 0)
            self._hand_to_worker(h, Stage.SCREEN)
        else:
            self._count(h, len(h.buf))

    def _count(self, h: Handover, size: int) -> None:
        """Keep HEADER_BUDGET's count of envelope headers being read."""
        self.header_bytes += size - h.counted
        h.counted = size

    def _eof(self, h: Handover) -> None:
        if h.stage is Stage.DRAIN:
            self._finish(h, h.final_refusal())
        elif h.stage is Stage.BODY and h.complete():
            self._hand_to_worker(h, Stage.COMMIT)
        else:
            if h.stage is Stage.BODY:
                why = "queue file is incomplete (no end marker)"
            elif len(h.buf) < len(queue_file.MAGIC):
                why = "not a relay-agent queue file"
            else:
                why = "envelope header not terminated"
            self._refuse(h, MALFORMED + why)
            self._finish(h, h.final_refusal())

    def _refuse(self, h: Handover, reply: str) -> None:
        """Nothing of it is kept; it is read on (not kept) to its end, then answered."""
        self._count(h, 0)
        h.refuse(reply)
        if h.drained():
            self._finish(h, h.final_refusal())

    def _hand_to_worker(self, h: Handover, stage: Stage) -> None:
        """Not read meanwhile: the worker's result comes back through self.done."""
        h.stage = stage
        self.sel.unregister(h.conn)
        job = self._open if stage is Stage.SCREEN else self._commit
        self.pool.submit(self._job, h, job)

    def _job(self, h: Handover, job: Callable[[Handover], str | None]) -> None:
        try:
            result = job(h)
        except Exception as exc:
            if isinstance(exc, AgentError):
                log.info("refused on the drop socket uid=%d: %s", h.uid, exc.message)
            result = refusal(exc)
        self.done.put((h, result))
        self._wake()

    def _completed(self, h: Handover, result: str | None) -> None:
        if h.dead:
            h.abort()  # cut off meanwhile: its client was told, nothing of it may stay
        elif h.stage is Stage.COMMIT:
            self._finish(h, result)
        else:
            self.sel.register(h.conn, selectors.EVENT_READ, h)
            if result is not None:
                self._refuse(h, result)
                return
            h.stage = Stage.BODY
            rest, h.buf = bytes(h.buf), bytearray()
            try:
                h.body(rest)
            except Exception as exc:
                self._refuse(h, refusal(exc))

    def _finish(self, h: Handover, reply: str | None) -> None:
        """Reply (None: none) and close. Anything not stored is removed, except a file a
        worker is committing: that one is the worker's (and, once durable, pickup's)."""
        self._count(h, 0)
        if h.stage is not Stage.COMMIT:
            h.abort()
        h.dead = True
        self.handovers.discard(h)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(h.conn)
        if reply is None:
            h.conn.close()
        else:
            _reply(h.conn, reply)

    # -- in the workers -------------------------------------------------------------
    def _open(self, h: Handover) -> None:
        h.open(self.cleanup())

    def _commit(self, h: Handover) -> str:
        assert h.pending is not None
        cleanup = self.cleanup()
        # counted here, where it can still be refused; pickup takes the verdict by the file's name
        book = quotas.shared(cleanup.queue.path)
        over = book.admit(cleanup.cfg, h.uid)
        if over is not None and cleanup.cfg.limits.over_quota == "refuse":
            h.abort()
            raise over.refusal()
        book.dropped(h.pending.name, over)
        try:
            name, st = h.pending.commit()
        except BaseException:
            book.forget(h.pending.name)
            raise
        h.pending = None
        qid = qid_for(name, st, cleanup.queue.key())
        env = h.env
        log.info(
            "%s: from=<%s>, nrcpt=%d, size=%d, uid=%d (%s)",
            qid,
            shown(env.sender),
            len(env.recipients),
            h.size,
            h.uid,
            "dropped" if over is None else "dropped, to be held: over quota",
        )
        try:
            self.dropped()
        except Exception:  # e.g. the loop closing at shutdown: the file is safe, pickup finds it later
            log.warning("%s: could not wake pickup; the next scan takes it", qid)
        return f"250 2.0.0 Ok: queued as {qid}"


def _reply(conn: socket.socket, reply: str) -> None:
    """One line, without waiting: a client that does not read it loses it, nobody else waits."""
    with conn, contextlib.suppress(OSError):
        conn.send(reply.encode("utf-8", "replace") + b"\r\n")
