"""A whole relay-agent installation in a temp dir: config, DKIM key, queue,
maildrop and socket paths, plus helpers to run the real daemon and the real
`sendmail`/`relay-agent` console scripts as subprocesses.

    env = AgentEnv(tmp_path, relay)          # relay: a RelayStandin
    env.start()                              # `relay-agent run`, waits for the socket
    env.sendmail(["-t", "-i"], b"To: a@example.net\\n\\nhi\\n")
    env.stop()                               # SIGTERM, waits for exit 0
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agent.dkim import key_files
from agent.queue import trigger

VENV_BIN = Path(sys.executable).parent
RELAY_AGENT = str(VENV_BIN / "relay-agent")
SENDMAIL = str(VENV_BIN / "sendmail")
MAILQ = str(VENV_BIN / "mailq")

_KEY_CACHE: dict[str, bytes] = {}


def _toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


class AgentEnv:
    def __init__(
        self,
        tmp: Path,
        relay: Any | None = None,
        *,
        domain: str = "example.com",
        rate: float = 500.0,
        extra: dict[str, dict[str, Any]] | None = None,
        dkim: bool = True,
    ) -> None:
        self.dir = tmp
        self.relay = relay
        self.domain = domain
        self.queue_dir = tmp / "queue"
        self.maildrop = tmp / "maildrop"
        self.socket = tmp / "run" / "submit.sock"
        self.config = tmp / "config.toml"
        self.key_file = tmp / "keys" / f"{domain}.sel1.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"
        self._log_fh: Any = None
        sections: dict[str, dict[str, Any]] = {
            "queue": {
                "path": str(self.queue_dir),
                "maildrop": str(self.maildrop),
                "min_free": 0,
                "retry_initial": 1,
                "retry_max": 2,
            },
            "listen": {"socket": str(self.socket)},
            "limits": {"rate": rate},
            "sender": {"default_from": f"cron@{domain}"},
            "aliases": {"root": f"ops@{domain}"},
        }
        if relay is not None:
            sections["relay"] = relay.relay_settings()
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        self.sections = sections
        self.dkim = dkim
        if dkim:
            self._write_key()
        self.write_config()

    def _write_key(self) -> None:
        self.key_file.parent.mkdir(mode=0o700, exist_ok=True)
        if "rsa" not in _KEY_CACHE:
            _KEY_CACHE["rsa"] = key_files.private_pem(key_files.generate("rsa", 2048))
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_KEY_CACHE["rsa"])

    def write_config(self) -> None:
        lines = []
        for name, values in self.sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        if self.dkim:
            lines += [
                "[[dkim]]",
                f'domain = "{self.domain}"',
                'selector = "sel1"',
                f'key_file = "{self.key_file}"',
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def dns_records(self) -> dict[str, str]:
        key = key_files.load_private_key(str(self.key_file))
        return {f"sel1._domainkey.{self.domain}": key_files.txt_value(key)}

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RELAY_AGENT_CONFIG"] = str(self.config)
        if self.relay is not None:
            env["RELAY_AGENT_PASSWORD"] = self.relay.password
        env.pop("CREDENTIALS_DIRECTORY", None)
        env.pop("NOTIFY_SOCKET", None)
        return env

    # -- the daemon ---------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(
            [RELAY_AGENT, "--config", str(self.config), "run"],
            env=self.env,
            stdout=self._log_fh,
            stderr=self._log_fh,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.listening():
                return
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen within {timeout}s:\n{self.log()}")

    def listening(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(str(self.socket))
                return s.recv(100).startswith(b"220")
        except OSError:
            return False

    def stop(self, timeout: float = 12.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.proc = None
            if self._log_fh:
                self._log_fh.close()
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self._log_fh.close()

    def poke(self) -> None:
        """What sendmail does after a maildrop write (and what any local user may do)."""
        trigger.poke(trigger.fifo_path(str(self.socket)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- the commands ---------------------------------------------------------
    def sendmail(
        self, args: Sequence[str], message: bytes, *, timeout: float = 30, user: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = [SENDMAIL, *args]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        return subprocess.run(cmd, input=message, env=self.env, capture_output=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RELAY_AGENT, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def smtp_data(
        self, data: bytes, sender: str = "app@example.com", rcpt: str = "a@example.net"
    ) -> tuple[int, bytes]:
        """One SMTP transaction over the daemon's socket: the reply to DATA's final dot."""
        with UnixSMTP(str(self.socket)) as smtp:
            smtp.ehlo()
            assert smtp.mail(sender)[0] == 250
            assert smtp.rcpt(rcpt)[0] == 250
            code, reply = smtp.data(data)
        return int(code), bytes(reply)

    def queue_json(self) -> list[dict[str, Any]]:
        out = self.cli("queue", "list", "--json")
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_dir = self.queue_dir / "msg"
            if (
                msg_dir.is_dir()
                and not any(msg_dir.iterdir())
                and not any(n for n in os.listdir(self.maildrop) if not n.startswith("."))
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"queue not empty after {timeout}s: {os.listdir(self.queue_dir / 'msg')}")


class UnixSMTP:
    """smtplib over a Unix socket (what a Python app talking to the socket does)."""

    def __new__(cls, path: str) -> Any:
        import smtplib

        class _Client(smtplib.SMTP):
            def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.connect(path)
                return s

        client = _Client(timeout=30)
        client.connect("localhost", 0)
        return client


def wait_until(cond: object, timeout: float = 10.0) -> None:
    """Poll `cond()` until it is true; fail the test after `timeout` seconds."""
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def traversable_tmp(prefix: str) -> Iterator[Path]:
    """A temp dir other users can reach (pytest's own are 0700): for tests run as `nobody`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
