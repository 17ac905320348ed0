"""The relay password never leaks: not in any output, log, queue/state/status file, digest,
corrupt/ file, crash traceback, or process command line.

One whole session per way of handing the daemon its password (environment, password_file,
systemd's $CREDENTIALS_DIRECTORY); afterwards every captured output and every file under
the temp dir (except the secret's own file) is searched for it, raw and base64-encoded.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_env import MAILQ, RELAY_AGENT, AgentEnv, wait_until
from tests.support.relay_standin import RelayStandin

USER = "relay-user@example.com"
PASSWORD = "Zq9!canary-Pw-5b7e1d"  # distinctive: any hit is a leak, never a coincidence
NEEDLES = [
    PASSWORD.encode(),
    base64.b64encode(PASSWORD.encode()),
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()),  # AUTH PLAIN, as a transcript would log it
]
MSG = b"From: app@example.com\nTo: %s\nSubject: secrets\n\nhello\n"


class SecretEnv(AgentEnv):
    """AgentEnv whose daemon gets the password one way only."""

    def __init__(self, tmp: Path, relay: RelayStandin, via: str) -> None:
        self.via = via
        self.secret_paths: list[Path] = []
        extra: dict[str, dict[str, Any]] = {}
        if via == "file":
            pw = tmp / "secret" / "relay-password"
            extra["relay"] = {"password_file": str(pw)}
            self._write_secret(pw)
        elif via == "credentials":
            self._write_secret(tmp / "credentials" / "relay-password")
        super().__init__(tmp, relay, extra=extra)

    def _write_secret(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(PASSWORD + "\n")
        self.secret_paths.append(path)

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.pop("RELAY_AGENT_PASSWORD", None)
        if self.via == "env":
            env["RELAY_AGENT_PASSWORD"] = PASSWORD
        elif self.via == "credentials":
            env["CREDENTIALS_DIRECTORY"] = str(self.dir / "credentials")
        return env


class Transcript:
    """Every byte any command printed, to be searched at the end."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, bytes]] = []

    def add(self, what: str, *streams: str | bytes) -> None:
        for s in streams:
            self.outputs.append((what, s.encode() if isinstance(s, str) else s))

    def run(self, what: str, cmd: list[str], env: dict[str, str], stdin: bytes = b"") -> bytes:
        res = subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=60)
        self.add(what, res.stdout, res.stderr)
        assert res.returncode == 0, (what, res.stderr)
        return res.stdout


def assert_no_secret(data: bytes, where: str) -> None:
    for needle in NEEDLES:
        assert needle not in data, f"password leaked into {where}"


def scan_tree(root: Path, skip: list[Path]) -> int:
    """Search every regular file under root (without following links); returns how many were read."""
    count = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p in skip or not p.is_file() or p.is_symlink():
                continue
            assert_no_secret(p.read_bytes(), str(p))
            count += 1
    return count


def check_processes(env: SecretEnv) -> None:
    assert env.proc is not None
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        assert_no_secret(cmdline, f"/proc/{pid}/cmdline")
    environ = Path(f"/proc/{env.proc.pid}/environ").read_bytes()
    if env.via == "env":
        assert PASSWORD.encode() in environ  # the one place it must be: where it was given
    else:
        assert_no_secret(environ, "the daemon's environment")


def crash_traceback(env: SecretEnv, t: Transcript) -> None:
    """A daemon that dies with an unexpected exception after loading its credentials."""
    (env.dir / "not-a-dir").write_text("x")
    broken = env.dir / "crash.toml"
    sock = str(env.dir / "not-a-dir" / "submit.sock")
    broken.write_text(env.config.read_text().replace(str(env.socket), sock))
    res = subprocess.run(
        [RELAY_AGENT, "--config", str(broken), "run"], env=env.env, capture_output=True, timeout=60
    )
    t.add("crash", res.stdout, res.stderr)
    assert res.returncode != 0 and b"not-a-dir" in res.stderr, res.stderr[-2000:]


@pytest.mark.parametrize("via", ["env", "file", "credentials"])
def test_password_never_leaks(
    tmp_path: Path, relay_standin_factory: Callable[..., RelayStandin], via: str
) -> None:
    relay = relay_standin_factory(users={USER: PASSWORD})
    env = SecretEnv(tmp_path, relay, via)
    t = Transcript()
    e = env.env
    env.start()
    try:
        # delivery with the right password
        t.run(
            "sendmail", [str(Path(RELAY_AGENT).parent / "sendmail"), "-t", "-i"], e, MSG % b"ok@example.net"
        )
        got = relay.wait_for(1)
        assert got[0].auth_user == USER and got[0].tls
        check_processes(env)
        # the relay now refuses our password: 535 defers, never bounces
        relay.users[USER] = "something-else"
        relay.down()  # cut the authenticated connection the daemon keeps for reuse
        relay.up()
        t.run("sendmail", [str(Path(RELAY_AGENT).parent / "sendmail"), "-t", "-i"], e, MSG % b"d@example.net")
        listed: list[dict[str, Any]] = []

        def deferred() -> bool:
            listed[:] = json.loads(t.run("queue list", [RELAY_AGENT, "queue", "list", "--json"], e))
            return bool(listed) and listed[0]["state"] == "deferred"

        wait_until(deferred, timeout=15.0)
        [item] = listed
        assert "535" in (item["last_error"] or ""), item
        t.run("queue show", [RELAY_AGENT, "queue", "show", item["id"]], e)
        status = json.loads(t.run("status", [RELAY_AGENT, "status", "--json"], e))
        assert status["running"] and status["queue"]["deferred"] == 1 and status["last_relay_error"]
        t.run("status", [RELAY_AGENT, "status"], e)
        t.run("config check", [RELAY_AGENT, "config", "check"], e)
        assert "1 Request" in t.run("mailq", [MAILQ], e).decode()
        t.run("sendmail -bp", [str(Path(RELAY_AGENT).parent / "sendmail"), "-bp"], e)
        assert env.proc is not None
        env.proc.send_signal(signal.SIGHUP)  # reloads credentials too
        wait_until(lambda: "reloaded" in env.log(), timeout=15.0)
        t.run("flush", [RELAY_AGENT, "queue", "flush"], e)
        wait_until(lambda: relay.auth_attempts >= 3, timeout=15.0)
        check_processes(env)
        # a garbage maildrop file: what corrupt/ gets must not carry it either
        (env.maildrop / "junkjunkjunk").write_bytes(b"junk\n")
        wait_until(lambda: any((env.queue_dir / "corrupt").iterdir()), timeout=15.0)
        crash_traceback(env, t)
    finally:
        assert env.stop() == 0
    t.add("daemon log", env.log())
    assert "status=deferred" in env.log() and "535" in env.log()  # the failure is reported, the secret not
    for what, data in t.outputs:
        assert_no_secret(data, what)
    read = scan_tree(tmp_path, env.secret_paths)
    assert read >= 6  # config, key, digest, status.json, state and msg files, corrupt/, log
    assert (tmp_path / "queue" / "status.json").exists() and (tmp_path / ".config.toml.digest").exists()
