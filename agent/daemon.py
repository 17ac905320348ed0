"""`relay-agent run`: the composition root.

Config, logging, the queue, listeners, maildrop pickup, the scheduler,
signals (SIGTERM drains, SIGHUP reloads) and systemd notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from agent import config as config_mod
from agent.config import Account, Config
from agent.delivery.domain_hold import DomainWatch
from agent.delivery.scheduler import Scheduler
from agent.dkim.signing import Signer
from agent.dns import startup
from agent.errors import EX_TEMPFAIL, AgentError, ConfigError
from agent.intake import listen_guard, pickup
from agent.intake.cleanup import Cleanup
from agent.intake.committer import Committer
from agent.intake.drop_socket import DropServer
from agent.intake.pickup_loop import PickupLoop
from agent.intake.pickup_round import Pickup
from agent.intake.smtp_server import Handler, factory
from agent.queue import trigger
from agent.queue.disk_thread import DiskThread
from agent.queue.store import Queue
from agent.relay import credentials, tls
from agent.status import snapshot
from agent.status.counters import Counters
from agent.submit.socket_client import drop_path

log = logging.getLogger("relay-agent")

DRAIN_SECONDS = 8.0  # SIGTERM: exit 0 within systemd's 10 s, in-flight work finished or requeued
LISTEN_BACKLOG = 128  # as asyncio's create_unix_server


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("relay-agent[%(process)d]: %(message)s"))
    root = logging.getLogger("relay-agent")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def sd_notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


def refresh_digest(cfg: Config) -> None:
    """Keep sendmail's pre-digested config fresh where we may write it (best effort)."""
    from agent.submit import config_cache

    config_cache.write(cfg)  # returns False where it cannot write; never raises for that


def passwords(cfg: Config) -> dict[str, str | None]:
    """Each relay account's password, from where credentials finds it (read at start and on reload)."""
    return {account.name: credentials.get_password(account) for account in cfg.accounts}


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.queue = Queue(cfg.queue.path, cfg.queue.min_free)
        for account in cfg.accounts:
            tls.check_ca_file(account.relay.ca_file)  # exit 78 now, not a deferral at every connect
        self.signer = Signer(cfg)
        self._cleanup = Cleanup(cfg, self.signer, self.queue)
        self.counters = Counters()
        self._passwords = passwords(cfg)
        self.disk = DiskThread()
        self.committer = Committer(self.queue, self._queued)  # counted and scheduled once on disk
        self.scheduler = Scheduler(
            cfg, self.queue, self.cleanup, self.password, self.counters, self.disk, self.committer.commit
        )
        # the sender-domain watch's holds: new mail held at cleanup, queued mail not sent
        self.watch = DomainWatch(lambda: self.cfg, self.queue, self.disk, self.scheduler, self.counters)
        self.scheduler.domain_hold = self.watch.held_domain
        self._cleanup.held_domains = self.watch.holds
        self.servers: list[asyncio.AbstractServer] = []
        self.stop_event = asyncio.Event()
        self.drop: DropServer | None = None
        self.unix_paths: list[str] = []

    def cleanup(self) -> Cleanup:
        return self._cleanup

    def password(self, account: Account) -> str | None:
        return self._passwords.get(account.name)

    # -- start ----------------------------------------------------------------
    async def start(self) -> None:
        t0 = time.monotonic()
        refresh_digest(self.cfg)
        self.queue.ensure_dirs()
        pickup.ensure_maildrop(self.cfg.queue.maildrop)
        self.queue.key()  # made now, before the drop socket's threads and pickup both want it
        for note in self.queue.recover():
            log.warning("%s", note)
        # before the scheduler loads or delivers anything: a maildrop file whose message is
        # queued already goes (agent.intake.pickup_round explains why that makes pickup exactly-once)
        self.pickup = Pickup(self.queue, self.cleanup, self.committer.commit, self.scheduler, self.disk)
        self.pickup.start(self.cfg.queue.maildrop)
        self.pickup_loop = PickupLoop(self.pickup, lambda: self.cfg.queue.maildrop, self.stop_event)
        count = self.scheduler.load_index()
        await self._listen()
        log.info(
            "started: %d message(s) queued, relay %s:%d, rate %.4g/s, ready in %.2fs",
            count,
            self.cfg.relay.host,
            self.cfg.relay.port,
            self.cfg.limits.rate,
            time.monotonic() - t0,
        )

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        lc = self.cfg.listen
        # any local user can connect: sessions are capped to fit the descriptor limit, each
        # has a deadline, and running out of descriptors is one log line, not one per accept
        budget = listen_guard.FdBudget()
        out_of_fds = listen_guard.out_of_fds()
        listen_guard.quiet_accept_errors(loop, out_of_fds)
        guard = listen_guard.SessionGuard(budget.smtp)
        handler = Handler(self.cleanup, self.scheduler.flush, "local", self.committer.commit)
        make = guard.wrap(factory(handler, self.cfg.hostname, self.cfg.limits.max_message_size))
        if lc.socket:
            os.makedirs(os.path.dirname(lc.socket), exist_ok=True)
            # before anyone can connect
            self.pickup_loop.listen(trigger.fifo_path(lc.socket))
            self.servers.append(await loop.create_unix_server(make, sock=self._bind_unix(lc.socket)))
            # the drop socket's threads store a file, then wake pickup on this loop
            wake = functools.partial(loop.call_soon_threadsafe, self.pickup_loop.wake.set)
            drop = self._bind_unix(drop_path(lc.socket))
            self.drop = DropServer(drop, self.cleanup, wake, budget.drop, out_of_fds)
        if lc.smtp:
            host, _, port = lc.smtp.rpartition(":")
            tcp = Handler(self.cleanup, self.scheduler.flush, "loopback", self.committer.commit)
            make_tcp = guard.wrap(factory(tcp, self.cfg.hostname, self.cfg.limits.max_message_size))
            self.servers.append(await loop.create_server(make_tcp, host.strip("[]"), int(port)))

    def _bind_unix(self, path: str) -> socket.socket:
        """A listening socket on `path` with the socket's mode and group (the drop socket's too)."""
        lc = self.cfg.listen
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        self.unix_paths.append(path)
        if lc.socket_group:
            os.chown(path, -1, grp.getgrnam(lc.socket_group).gr_gid)
        os.chmod(path, int(lc.socket_mode, 8))
        sock.listen(LISTEN_BACKLOG)
        return sock

    def _queued(self, qid: str) -> None:
        self.counters.bump("queued")
        self.scheduler.add(qid)

    # -- loops ----------------------------------------------------------------
    async def watchdog_loop(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if not usec:
            return
        while not self.stop_event.is_set():
            sd_notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), usec / 2e6)

    # -- reload / stop ----------------------------------------------------------
    def reload(self) -> None:
        try:
            cfg = config_mod.load(self.cfg.path or None)
            signer = Signer(cfg)
            for account in cfg.accounts:
                tls.check_ca_file(account.relay.ca_file)
            new_passwords = passwords(cfg)
        except AgentError as exc:
            log.error("reload failed, keeping the old config: %s", exc.message)
            return
        if (cfg.queue.path, cfg.listen) != (self.cfg.queue.path, self.cfg.listen):
            log.warning("reload: queue path and listeners keep their old values until restart")
        self.cfg = cfg
        self.queue.min_free = cfg.queue.min_free
        self.signer = signer
        self._passwords = new_passwords
        self._cleanup = Cleanup(cfg, signer, self.queue)
        self._cleanup.held_domains = self.watch.holds
        self.scheduler.reconfigure(cfg)
        refresh_digest(cfg)
        self.pickup_loop.wake.set()  # maildrop files the old limits left waiting get another look
        log.info("reloaded config, keys, aliases and credentials")

    async def shutdown(self) -> None:
        log.info("stopping: no new mail accepted; draining deliveries in flight")
        for srv in self.servers:
            srv.close()
        if self.drop is not None:
            await asyncio.to_thread(self.drop.close)  # hand-overs in progress finish first
        self.pickup_loop.close()
        await self.scheduler.stop()


async def run(cfg: Config) -> int:
    daemon = Daemon(cfg)
    await daemon.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop_event.set)
    loop.add_signal_handler(signal.SIGINT, daemon.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    status_path = snapshot.path_in(cfg.queue.path)
    status = snapshot.loop(
        status_path, daemon.counters, daemon.disk.run, daemon.stop_event, daemon.watch.shown
    )
    tasks = [
        asyncio.create_task(daemon.scheduler.run()),
        asyncio.create_task(daemon.pickup_loop.run()),
        asyncio.create_task(status),
        asyncio.create_task(daemon.watchdog_loop()),
    ]
    tasks += _optional_tasks(daemon)
    sd_notify("READY=1\nSTATUS=accepting mail")
    await daemon.stop_event.wait()
    sd_notify("STOPPING=1")
    await daemon.shutdown()
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    daemon.committer.close()
    daemon.disk.close()
    snapshot.write(status_path, daemon.counters, daemon.watch.shown())
    for path in daemon.unix_paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    log.info("stopped")
    return 0


def _optional_tasks(daemon: Daemon) -> list[asyncio.Task[Any]]:
    tasks: list[asyncio.Task[Any]] = []
    if daemon.cfg.metrics.listen:
        tasks.append(asyncio.create_task(_observe(daemon)))
    if daemon.cfg.dns.watch_interval > 0:  # its first round, at start, says what the start-up check would
        tasks.append(asyncio.create_task(daemon.watch.run(daemon.stop_event)))
    else:
        startup.start(daemon.cfg.path)
    return tasks


async def _observe(daemon: Daemon) -> None:
    """/metrics, /healthz and /readyz on [metrics] listen, fed until the daemon stops."""
    from agent.queue import stats
    from agent.status import http, watch
    from agent.status.health import Health
    from agent.status.metrics import Metrics

    cfg = daemon.cfg
    metrics = Metrics()
    for account in cfg.accounts:
        metrics.add_account(account.name, account.rate)
    health = Health(cfg.queue.retry_max, listening=True)  # run() starts this after the listeners
    daemon.counters.sink, daemon.counters.health = metrics, health
    server = http.start(cfg.metrics.listen, metrics, health)
    try:
        refresh = lambda: daemon.disk.run(stats.figures, daemon.queue)  # noqa: E731
        await watch.loop(metrics, health, refresh, lambda: daemon.counters.moves, daemon.stop_event)
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


def main(config_path: str | None) -> int:
    setup_logging()
    try:
        cfg = config_mod.load(config_path)
        return asyncio.run(run(cfg))
    except ConfigError as exc:
        log.error("config error: %s", exc.message)
        return exc.exit_code
    except AgentError as exc:
        log.error("%s", exc.message)
        return exc.exit_code
    except OSError as exc:  # e.g. the socket's directory cannot be made: one line, try again later
        log.error("cannot start: %s", exc)
        return EX_TEMPFAIL
