"""The drop socket (`<socket>.drop`): postdrop for users who cannot fsync the maildrop.

A 1733 maildrop is not readable by other users, so they cannot open it to fsync a
rename (PHP-FPM, most cron jobs). They write the bytes they would have put there
(agent.envelope's format) to this socket, shut down their side and read one reply
line. The daemon stores them in the maildrop as root's sendmail would (temp file,
fsync, rename, fsync the directory), answers 250 with the queue id pickup will give
the file, and wakes pickup, which cleans up, signs and queues it like any maildrop
file. The client waits for one durable write, not for cleanup, DKIM and the queue's
own commit (~0.7 ms against ~2.1 ms here), and the event loop is not in its path.

The bytes are untrusted input: read with the maildrop's size limit, parsed and put
through cleanup's envelope checks (size, NUL, recipients against [aliases], sender)
before anything is written, so those refusals still come back before sendmail exits.
The uid comes from SO_PEERCRED; the file's uid line is rewritten with it, and pickup
trusts a uid line only in files the daemon itself owns (see pickup.submitter).

Threads, not the event loop: each hand-over is a few syscalls that release the GIL,
and a busy loop (TLS, DKIM) would otherwise sit between the client and its 250.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from agent import envelope as fmt
from agent import maildrop_write
from agent.cleanup import Cleanup
from agent.errors import AgentError
from agent.pickup import qid_for, shown
from agent.server import socket_peer_uid

log = logging.getLogger("relay-agent")

IO_TIMEOUT = 60.0  # a client that sends nothing gives its worker back after this
WORKERS = 16  # hand-overs in progress at once; more wait in the listen backlog
DRAIN_FACTOR = 4  # an oversized hand-over is read (and dropped) up to this many times the limit
STOP_WAIT = 1.0  # at shutdown, for hand-overs in progress (one durable write each): the
# deliveries' drain (daemon.DRAIN_SECONDS) must still fit in systemd's 10 s after it


class DropServer:
    """Accepts on a bound, listening AF_UNIX socket until close()."""

    def __init__(
        self, sock: socket.socket, cleanup: Callable[[], Cleanup], dropped: Callable[[], object]
    ) -> None:
        self.sock = sock
        self.cleanup = cleanup  # the current one: a reload replaces config, aliases and key
        self.dropped = dropped  # wakes pickup; must be safe to call from any thread
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="drop")
        self.closing = False
        self.active: set[socket.socket] = set()  # connections being served
        self.idle = threading.Condition()  # notified whenever one of them ends
        self.acceptor = threading.Thread(target=self._accept_loop, name="drop-accept", daemon=True)
        self.acceptor.start()

    def _accept_loop(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.closing:
                    return
                continue  # EMFILE, ECONNABORTED: the next client may fare better
            self.pool.submit(self._serve, conn)

    def close(self) -> None:
        """No new hand-overs. Those in progress get STOP_WAIT seconds to finish (each is one
        durable write); a client still sending after that is cut off, and nothing of its
        message is stored, so the daemon still stops within systemd's 10 s."""
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() in the acceptor thread
        except OSError:
            pass
        self.sock.close()
        self.acceptor.join(STOP_WAIT)
        with self.idle:
            self.idle.wait_for(lambda: not self.active, STOP_WAIT)
            for conn in self.active:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # its recv() ends: a short, refused message
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _serve(self, conn: socket.socket) -> None:
        with self.idle:
            self.active.add(conn)
        try:
            self._serve_one(conn)
        finally:
            with self.idle:
                self.active.discard(conn)
                self.idle.notify_all()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                reply = self._take(conn)
            except OSError:
                return  # the client went away or stalled: nothing was stored
            except Exception:
                log.exception("drop socket: unexpected error")
                reply = "451 4.3.0 internal error; try again later"
            try:
                conn.sendall(reply.encode("utf-8", "replace") + b"\r\n")
            except OSError:
                pass

    def _take(self, conn: socket.socket) -> str:
        cleanup = self.cleanup()
        cfg = cleanup.cfg
        uid = socket_peer_uid(conn)
        if uid < 0:  # never seen on Linux; without it the file could not name its submitter
            return "451 4.3.0 cannot tell who is submitting; try again later"
        data = read_limited(conn, cfg.limits.max_message_size + fmt.HEADER_SLACK)
        if data is None:
            # the rest is read and dropped, so the client's write ends and it reads this
            return "552 5.3.4 message exceeds the size limit (limits.max_message_size)"
        try:
            env, message = fmt.decode(data)
            cleanup.screen(env.sender, env.recipients, message)  # e.g. an unknown local recipient
            stored = fmt.encode(fmt.Envelope(env.sender, env.recipients, env.created, env.dsn, uid), message)
            name, st = maildrop_write.store(cfg.queue.maildrop, cfg.queue.min_free, stored)
        except fmt.FormatError as exc:
            return f"554 5.6.0 malformed hand-over: {exc}"
        except AgentError as exc:
            log.info("refused on the drop socket uid=%d: %s", uid, exc.message)
            return exc.smtp_reply()
        qid = qid_for(name, st, cleanup.queue.key())
        log.info(
            "%s: from=<%s>, nrcpt=%d, size=%d, uid=%d (dropped)",
            qid,
            shown(env.sender),
            len(env.recipients),
            len(message),
            uid,
        )
        try:
            self.dropped()
        except Exception:  # e.g. the loop closing at shutdown: the file is safe, pickup finds it later
            log.warning("%s: could not wake pickup; the next scan takes it", qid)
        return f"250 2.0.0 Ok: queued as {qid}"


def read_limited(conn: socket.socket, limit: int) -> bytes | None:
    """Everything up to the client's EOF; None when it is over `limit`, after reading on
    (not keeping) up to DRAIN_FACTOR times the limit, for the client's write to end."""
    chunks: list[bytes] = []
    size = 0
    while chunk := conn.recv(1 << 16):
        size += len(chunk)
        if size > limit:
            chunks.clear()
            if size > DRAIN_FACTOR * limit:
                return None
            continue
        chunks.append(chunk)
    return None if size > limit else b"".join(chunks)
