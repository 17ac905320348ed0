"""Every error is one clear line: through the real CLI and the real daemon, as subprocesses.

- a relay host that does not resolve: "cannot resolve relay host X: <resolver's text>" in
  `credentials check`, the queue's last_error and `status` (never "Unknown error -2");
- `config check` opens the files the config names as the daemon would (DKIM keys, relay.ca_file,
  relay.password_file) and exits 78 naming the first it cannot use;
- the daemon refuses (78) a queue directory or maildrop another user owns or may write, and a
  maildrop path that is a regular file, naming the path and the fix.

CI runs as root: "another user" is nobody, by chown.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.agent_env import MAILQ, RELAY_AGENT, AgentEnv, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)"
)

NOWHERE = "relay.does-not-exist.invalid"
PASSWORD = "s3cret-Password"
NOBODY = pwd.getpwnam("nobody").pw_uid
MESSAGE = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: s\r\n\r\nhi\r\n"


def nowhere_env(tmp: Path) -> AgentEnv:
    relay = {"host": NOWHERE, "port": 43799, "username": "user@example.com", "timeout": 5}
    return AgentEnv(tmp, None, extra={"relay": relay})


def run_cli(env: AgentEnv, *args: str, cmd: str = RELAY_AGENT) -> subprocess.CompletedProcess[str]:
    e = env.env | {"RELAY_AGENT_PASSWORD": PASSWORD}
    return subprocess.run([cmd, *args], env=e, capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_unresolvable_relay_in_credentials_check(tmp_path: Path) -> None:
    res = run_cli(nowhere_env(tmp_path), "credentials", "check")
    assert res.returncode == 75, res
    line = one_line(res.stderr)
    assert line.startswith(
        f"relay-agent: credentials check failed at connect: cannot resolve relay host {NOWHERE}: "
    )
    assert "Unknown error" not in res.stdout + res.stderr and line.split(": ")[-1], res


def test_unresolvable_relay_in_queue_and_status(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    env.start()
    try:
        assert env.smtp_data(MESSAGE)[0] == 250
        prefix = f"cannot resolve relay host {NOWHERE}: "
        items: list[dict[str, object]] = []

        def deferred() -> bool:
            items[:] = env.queue_json()
            return bool(items) and str(items[0]["last_error"] or "").startswith(prefix)

        wait_until(deferred, timeout=20)
        assert "Unknown error" not in json.dumps(items)
        status = json.loads(run_cli(env, "status", "--json").stdout)
        assert str(status["last_relay_error"]).startswith(prefix), status
        text = run_cli(env, "status").stdout
        assert f"last relay error: {prefix}" in text and "Unknown error" not in text
        assert prefix in run_cli(env, cmd=MAILQ).stdout
    finally:
        env.stop()


def _missing_key(env: AgentEnv) -> str:
    env.key_file.unlink()
    return f"DKIM key file {env.key_file}: cannot open: No such file or directory"


def _loose_key(env: AgentEnv) -> str:
    env.key_file.chmod(0o644)
    return f"key file {env.key_file} is readable by others (mode 0644); chmod 600 {env.key_file}"


def _missing_ca(env: AgentEnv) -> str:
    ca = env.dir / "no-such-ca.pem"
    env.sections["relay"]["ca_file"] = str(ca)
    return f"relay.ca_file {ca}: cannot read: No such file or directory"


def _garbage_ca(env: AgentEnv) -> str:
    ca = env.dir / "ca.pem"
    ca.write_text("not a certificate\n")
    env.sections["relay"]["ca_file"] = str(ca)
    return f"relay.ca_file {ca}: no usable CA certificate in it"


def _missing_password_file(env: AgentEnv) -> str:
    pw = env.dir / "relay-password"
    env.sections["relay"]["password_file"] = str(pw)
    return f"password_file {pw}: cannot open: No such file or directory"


def _loose_password_file(env: AgentEnv) -> str:
    pw = env.dir / "relay-password"
    pw.write_text("pw\n")
    pw.chmod(0o644)
    env.sections["relay"]["password_file"] = str(pw)
    return f"password_file {pw} is readable by group/others (mode 0644); chmod 600 {pw}"


def _foreign_password_file(env: AgentEnv) -> str:
    pw = env.dir / "relay-password"
    pw.write_text("pw\n")
    pw.chmod(0o600)
    os.chown(pw, NOBODY, -1)
    env.sections["relay"]["password_file"] = str(pw)
    return f"password_file {pw} is owned by uid {NOBODY}, not by root or this user"


@pytest.mark.parametrize(
    "spoil",
    [
        _missing_key,
        _loose_key,
        _missing_ca,
        _garbage_ca,
        _missing_password_file,
        _loose_password_file,
        _foreign_password_file,
    ],
)
def test_config_check_opens_every_file(tmp_path: Path, spoil: Callable[[AgentEnv], str]) -> None:
    env = nowhere_env(tmp_path)
    good = run_cli(env, "config", "check", "--quiet")
    assert good.returncode == 0 and good.stderr == "", good
    expected = spoil(env)
    env.write_config()
    res = run_cli(env, "config", "check", "--quiet")
    assert res.returncode == 78, res
    assert one_line(res.stderr).startswith(f"relay-agent: {expected}"), res.stderr
    assert res.stdout == ""


def run_daemon(env: AgentEnv) -> tuple[int, str]:
    proc = subprocess.run([RELAY_AGENT, "run"], env=env.env, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def test_daemon_refuses_what_config_check_refuses(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    expected = _missing_key(env)
    rc, out = run_daemon(env)
    assert rc == 78 and expected in one_line(out), out


def _queue_of_nobody(env: AgentEnv) -> str:
    env.queue_dir.mkdir(mode=0o700)
    os.chown(env.queue_dir, NOBODY, -1)
    return f"queue directory {env.queue_dir} is owned by nobody, not by root; chown -R root {env.queue_dir}"


def _msg_of_nobody(env: AgentEnv) -> str:
    (env.queue_dir / "msg").mkdir(mode=0o700, parents=True)
    os.chown(env.queue_dir / "msg", NOBODY, -1)
    msg = env.queue_dir / "msg"
    return f"queue directory {msg} is owned by nobody, not by root; chown -R root {msg}"


def _queue_group_writable(env: AgentEnv) -> str:
    env.queue_dir.mkdir()
    env.queue_dir.chmod(0o770)
    return (
        f"queue directory {env.queue_dir} is writable by group/others (mode 0770); chmod 700 {env.queue_dir}"
    )


def _maildrop_of_nobody(env: AgentEnv) -> str:
    env.maildrop.mkdir()
    env.maildrop.chmod(0o1733)
    os.chown(env.maildrop, NOBODY, -1)
    return f"maildrop {env.maildrop} is owned by nobody, not by root; chown root {env.maildrop}"


def _maildrop_not_1733(env: AgentEnv) -> str:
    env.maildrop.mkdir()
    env.maildrop.chmod(0o1777)
    return f"maildrop {env.maildrop} has mode 1777, not 1733; chmod 1733 {env.maildrop}"


def _maildrop_is_a_file(env: AgentEnv) -> str:
    env.maildrop.write_text("")
    return f"maildrop {env.maildrop} is a regular file, not a directory"


@pytest.mark.parametrize(
    "spoil",
    [
        _queue_of_nobody,
        _msg_of_nobody,
        _queue_group_writable,
        _maildrop_of_nobody,
        _maildrop_not_1733,
        _maildrop_is_a_file,
    ],
)
def test_daemon_refuses_unsafe_directories(tmp_path: Path, spoil: Callable[[AgentEnv], str]) -> None:
    env = nowhere_env(tmp_path)
    expected = spoil(env)
    rc, out = run_daemon(env)
    assert rc == 78, out
    line = one_line(out)
    assert f"config error: {expected}" in line, out
    assert "Errno" not in line
    assert not env.socket.exists()  # refused before listening


def test_daemon_still_makes_missing_directories(tmp_path: Path) -> None:
    env = nowhere_env(tmp_path)
    env.start()
    try:
        assert (env.maildrop.stat().st_mode & 0o7777, env.maildrop.stat().st_uid) == (0o1733, 0)
        assert (env.queue_dir.stat().st_mode & 0o7777, env.queue_dir.stat().st_uid) == (0o700, 0)
    finally:
        assert env.stop() == 0
    env.start()  # and accepts what it made
    assert env.stop() == 0
