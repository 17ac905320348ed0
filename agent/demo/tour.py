"""`relay-agent demo`: the whole mail path on this machine, with no account and no network.

A throwaway temp dir holds the queue, maildrop, socket, config and a fresh DKIM key; a local
relay stand-in (agent/demo/smarthost.py) plays the smarthost with STARTTLS and AUTH. Mail goes in
through the real `sendmail` console script, first with the daemon down (maildrop), then up
(maildrop and a poke for root, the drop socket for other users), and comes out at the relay,
where dkimpy verifies the signature against the generated key. Every step prints one or two
lines with its timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.demo.smarthost import HOST, DemoRelay, Received
from agent.dkim import key_files
from agent.queue import maildrop_write

DOMAIN = "demo.example"
SELECTOR = "demo"
USER = f"demo@{DOMAIN}"
ALIAS_ROOT = f"ops@{DOMAIN}"
PASSWORD_ENV = "RELAY_AGENT_DEMO_PASSWORD"
DELIVERY_TIMEOUT = 15.0
SOCKET_TIMEOUT = 15.0
CRON_MESSAGE = (
    b"Subject: Cron <root@localhost> /usr/local/bin/nightly-backup\n\nbackup done: 3 files, 0 errors\n"
)
PHP_MESSAGE = (
    b"From: My App <app@demo.example>\n"
    b"To: someone@example.net\n"
    b"Subject: Your order #1042\n"
    b"\n"
    b"Thanks for your order. It ships tomorrow.\n"
)


# ----- pure helpers ---------------------------------------------------------------------------


def config_toml(tmp: str, relay_port: int, ca_file: str, key_file: str) -> str:
    """The demo's config: everything in the temp dir, relay = the local stand-in."""
    sections: dict[str, dict[str, Any]] = {
        "relay": {"host": HOST, "port": relay_port, "username": USER, "ca_file": ca_file, "timeout": 10},
        "queue": {
            "path": os.path.join(tmp, "queue"),
            "maildrop": os.path.join(tmp, "maildrop"),
            "min_free": 0,
            "retry_initial": 1,
            "retry_max": 2,
        },
        "listen": {"socket": os.path.join(tmp, "run", "submit.sock")},
        "limits": {"rate": 10.0},
        "sender": {"default_from": USER},
        "aliases": {"root": ALIAS_ROOT},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    lines += [
        "[[dkim]]",
        f'domain = "{DOMAIN}"',
        f'selector = "{SELECTOR}"',
        f"key_file = {json.dumps(key_file)}",
    ]
    return "\n".join(lines) + "\n"


def dkim_verdicts(message: bytes, records: Mapping[str, str]) -> list[tuple[bool, str]]:
    """(passed, "pass (d=... s=..., a)") for each DKIM-Signature, from dkimpy, DNS served from records."""
    import dkim

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        value = records.get(key)
        return value.encode() if value is not None else None

    count = sum(1 for line in message.split(b"\n") if line.lower().startswith(b"dkim-signature:"))
    verdicts = []
    for idx in range(count):
        checker = dkim.DKIM(message)
        try:
            ok = bool(checker.verify(idx=idx, dnsfunc=dnsfunc))
        except dkim.DKIMException as exc:
            ok = False
            checker.signature_fields.setdefault(b"error", str(exc).encode())
        tags = {k.decode(): v.decode(errors="replace") for k, v in checker.signature_fields.items()}
        where = f"d={tags.get('d', '?')} s={tags.get('s', '?')}, {tags.get('a', '?')}"
        verdicts.append((ok, f"{'pass' if ok else 'fail'} ({where})"))
    return verdicts


def status_lines(log: str, word: str = "status=sent") -> list[str]:
    return [line for line in log.splitlines() if word in line]


def tool(name: str, fallback: list[str]) -> list[str]:
    """A console script installed next to this interpreter, else the module behind it."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return [path] if os.access(path, os.X_OK) else fallback


# ----- output ---------------------------------------------------------------------------------


@dataclass
class Report:
    """Numbered steps on stdout; remembers what failed for the closing verdict."""

    out: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)
    step: int = 0

    def head(self, text: str) -> None:
        self.step += 1
        self.out(f"[{self.step}] {text}")

    def line(self, text: str) -> None:
        self.out(f"    {text}")

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            self.line(f"FAILED: {what}")
        return ok


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# ----- the run --------------------------------------------------------------------------------


class Demo:
    def __init__(self, tmp: str, report: Report) -> None:
        self.tmp = tmp
        self.r = report
        # Tests set the password so they can prove it never shows up in the output.
        self.password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(18)
        self.config = os.path.join(tmp, "config.toml")
        self.key_file = os.path.join(tmp, f"{DOMAIN}.{SELECTOR}.pem")
        self.log_path = os.path.join(tmp, "daemon.log")
        self.socket = os.path.join(tmp, "run", "submit.sock")
        self.maildrop = os.path.join(tmp, "maildrop")
        self.records: dict[str, str] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        # Only the daemon gets the password; systemd's variables would redirect it elsewhere.
        drop = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "RELAY_AGENT_PASSWORD", PASSWORD_ENV)
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env["RELAY_AGENT_CONFIG"] = self.config

    def run(self, relay: DemoRelay) -> None:
        self.make_key()
        self.r.head(f"relay stand-in: {HOST}:{relay.port}, STARTTLS required, AUTH as {USER}, throwaway CA")
        with open(self.config, "w") as fh:
            fh.write(config_toml(self.tmp, relay.port, relay.ca_file, self.key_file))
        self.r.head(f"config: {self.config}")
        self.r.line("queue, maildrop, socket and key all live in that temp dir")
        t_cron = self.send_cron()
        t_up = self.start_daemon()
        if t_up is None:
            return
        t_php = self.send_php()
        since = {
            ALIAS_ROOT: (max(t_cron, t_up), "the daemon came up"),
            "someone@example.net": (t_php or t_up, "sendmail returned"),
        }
        self.deliver(relay, since)

    def make_key(self) -> None:
        t0 = time.monotonic()
        key = key_files.generate("rsa", 2048)
        key_files.write_private_key(key, self.key_file)
        value = key_files.txt_value(key)
        self.records[key_files.record_name(DOMAIN, SELECTOR)] = value
        self.r.head(f"DKIM key: RSA-2048 for {DOMAIN}, selector {SELECTOR} ({ms(time.monotonic() - t0)})")
        self.r.line("the DNS record you would publish:")
        self.r.line(key_files.zone_record(DOMAIN, SELECTOR, value))

    def sendmail(self, args: list[str], message: bytes) -> tuple[int, float, str]:
        cmd = tool("sendmail", [sys.executable, "-m", "agent.submit.sendmail"])
        t0 = time.monotonic()
        proc = subprocess.run([*cmd, *args], input=message, env=self.env, capture_output=True, timeout=60)
        elapsed = time.monotonic() - t0
        return proc.returncode, elapsed, proc.stderr.decode(errors="replace").strip()

    def send_cron(self) -> float:
        args = ["-FCronDaemon", "-i", "-oem", "root"]
        self.r.head("cron mails root while the daemon is DOWN: sendmail " + " ".join(args))
        rc, elapsed, err = self.sendmail(args, CRON_MESSAGE)
        self.r.line(f"sendmail exit {rc} in {ms(elapsed)}" + (f": {err}" if err else ""))
        self.r.check(rc == 0, f"sendmail (daemon down) exited {rc}")
        waiting = [n for n in os.listdir(self.maildrop) if not n.startswith(".")] if rc == 0 else []
        if self.r.check(len(waiting) == 1, f"expected 1 file in the maildrop, found {len(waiting)}"):
            self.show_mailq()
        return time.monotonic()

    def show_mailq(self) -> None:
        cmd = tool("mailq", [sys.executable, "-m", "agent.submit.mailq"])
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        self.r.line("it waits in the maildrop; mailq shows it:")
        for line in proc.stdout.splitlines():
            if line.strip() and not line.startswith("-Queue ID-"):
                self.r.line("  " + line.rstrip())
        self.r.check(proc.returncode == 0, f"mailq exited {proc.returncode}: {proc.stderr.strip()}")

    def start_daemon(self) -> float | None:
        cmd = tool("relay-agent", [sys.executable, "-c", "from agent.cli.commands import main; main()"])
        env = dict(self.env, RELAY_AGENT_PASSWORD=self.password)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.daemon = subprocess.Popen(
                [*cmd, "--config", self.config, "run"], env=env, stdout=log, stderr=log
            )
        while time.monotonic() - t0 < SOCKET_TIMEOUT and self.daemon.poll() is None:
            if listening(self.socket):
                self.r.head(f"daemon up (relay-agent run): socket ready after {time.monotonic() - t0:.2f} s")
                return time.monotonic()
            time.sleep(0.05)
        rc = self.daemon.poll()
        self.r.head("daemon start")
        self.r.check(
            False, f"daemon exited {rc}" if rc is not None else f"no socket after {SOCKET_TIMEOUT:.0f} s"
        )
        self.show_log_tail()
        return None

    def send_php(self) -> float | None:
        self.r.head("a PHP app's mail() while the daemon is UP: sendmail -t -i")
        rc, elapsed, err = self.sendmail(["-t", "-i"], PHP_MESSAGE)
        how = (
            "written to the maildrop, and the daemon poked (you may fsync it)"
            if maildrop_write.can_fsync(self.maildrop)
            else "handed to the daemon over its drop socket"
        )
        self.r.line(f"sendmail exit {rc} in {ms(elapsed)}, {how}")
        if err:
            self.r.line(err)
        return time.monotonic() if self.r.check(rc == 0, f"sendmail (daemon up) exited {rc}") else None

    def deliver(self, relay: DemoRelay, since: dict[str, tuple[float, str]]) -> None:
        msgs = relay.wait_for(2, DELIVERY_TIMEOUT)
        arrived = {rcpt: m for m in msgs for rcpt in m.rcpt_tos}
        self.r.head(f"relay received {len(msgs)} of 2 messages")
        self.r.check(
            len(msgs) == 2, f"only {len(msgs)} of 2 messages reached the relay in {DELIVERY_TIMEOUT:.0f} s"
        )
        for rcpt, (start, event) in since.items():
            msg = arrived.get(rcpt)
            if msg is not None:
                self.show_message(msg, f"{max(msg.time - start, 0):.2f} s after {event}")
        self.stop_daemon()
        lines = status_lines(self.read_log())
        self.r.line("the daemon's log of the deliveries:")
        for line in lines:
            self.r.line("  " + line)
        self.r.check(len(lines) >= 2, f"expected 2 status=sent log lines, found {len(lines)}")

    def show_message(self, msg: Received, when: str) -> None:
        rcpts = ", ".join(f"<{a}>" for a in msg.rcpt_tos)
        self.r.line(f"<{msg.mail_from}> -> {rcpts}, {len(msg.data)} bytes: delivered {when}")
        auth = f"AUTH {msg.auth_user}" if msg.auth_user else "no AUTH"
        verdicts = dkim_verdicts(msg.data, self.records)
        shown = "; ".join(v for _, v in verdicts) or "fail (no DKIM-Signature)"
        self.r.line(f"  {'TLS' if msg.tls else 'NO TLS'} + {auth}; DKIM: {shown}")
        self.r.check(msg.tls and msg.auth_user == USER, f"message to {rcpts} was not sent over TLS with AUTH")
        self.r.check(bool(verdicts) and all(ok for ok, _ in verdicts), f"DKIM did not verify for {rcpts}")

    def stop_daemon(self) -> None:
        if self.daemon is None:
            return
        t0 = time.monotonic()
        rc = stop(self.daemon)
        self.daemon = None
        self.r.line(f"daemon stopped by SIGTERM: exit {rc} in {ms(time.monotonic() - t0)}")
        self.r.check(rc == 0, f"daemon exited {rc} on SIGTERM")

    def read_log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def show_log_tail(self) -> None:
        tail = [line for line in self.read_log().splitlines() if self.password not in line][-8:]
        for line in tail:
            self.r.line("  log: " + line)

    def kill(self) -> None:
        if self.daemon is not None:
            stop(self.daemon)
            self.daemon = None


def listening(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], timeout: float = 12.0) -> int:
    """SIGTERM, then SIGKILL if it does not drain in time (a hung daemon must not outlive the demo)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -signal.SIGKILL


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="relay-agent-demo-")
    try:
        yield tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(keep: bool = False) -> int:
    report = Report()
    report.out("relay-agent demo: the whole mail path on this machine, no account, no network")
    t0 = time.monotonic()
    with workdir(keep) as tmp:
        demo = Demo(tmp, report)
        try:
            with DemoRelay(tmp, USER, demo.password) as relay:
                try:
                    demo.run(relay)
                finally:
                    demo.kill()
        except KeyboardInterrupt:
            report.out("interrupted; cleaned up")
            return 130
        except Exception as exc:  # the demo reports any breakage in one line instead of a traceback
            report.failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if keep:
            report.out(f"kept: {tmp}")
    elapsed = time.monotonic() - t0
    if report.failures:
        report.out(f"demo FAILED after {elapsed:.1f} s: " + "; ".join(report.failures))
        return 1
    report.out(
        f"demo passed in {elapsed:.1f} s: queued, relayed over STARTTLS+AUTH, DKIM-signed and verified"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main("--keep" in sys.argv[1:]))
