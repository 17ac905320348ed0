"""File modes and who may do what: the queue is the daemon's alone, the socket follows
listen.socket_mode/socket_group, the maildrop is writable but not listable.

CI runs as root, so every "other user" check runs as `nobody` (setpriv), with
Debian's /usr/bin/python3 (the venv's interpreter lives under /root, mode 0700).
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin

REPO = Path(__file__).resolve().parents[1]
SITE = sysconfig.get_paths()["purelib"]
SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
GROUP = "users"  # a group nobody is not in
MSG = b"From: app@example.com\nTo: %s\nSubject: perms\n\nhello\n"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def as_other(code: str, *args: str, groups: str = "") -> subprocess.CompletedProcess[str]:
    """Run Python code as nobody (optionally with supplementary groups)."""
    who = AS_NOBODY if not groups else ["setpriv", "--reuid=nobody", "--regid=nogroup", f"--groups={groups}"]
    return subprocess.run(
        [*who, SYSTEM_PYTHON, "-c", code, *args], capture_output=True, text=True, cwd="/", timeout=60
    )


def cli_as_nobody(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys; sys.path[0:0] = [{str(REPO)!r}, {SITE!r}]; sys.argv[0] = 'relay-agent';"
        "from agent.cli.commands import main; main()"
    )
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(config)}
    return subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )


# --- modes after real submissions ---------------------------------------------------


def test_queue_dirs_0700_files_0600_whatever_the_umask(tmp_path: Path, relay_standin: RelayStandin) -> None:
    relay_standin.down()  # keep everything queued and give it state files
    env = AgentEnv(tmp_path, relay_standin)
    old = os.umask(0o022)  # a permissive umask, as a shell or a careless unit would give
    try:
        assert env.sendmail(["-i", "md@example.net"], MSG % b"md@example.net").returncode == 0  # maildrop
        env.start()
        for i in range(3):
            assert (
                env.sendmail(["-i", f"s{i}@example.net"], MSG % f"s{i}@example.net".encode()).returncode == 0
            )
        state = env.queue_dir / "state"

        def states() -> list[Path]:
            # retries go on meanwhile: skip a state file being replaced (ID.tmp, renamed at once)
            return [f for f in state.iterdir() if not f.name.endswith(".tmp")]

        wait_until(lambda: len(states()) == 4, timeout=15.0)
        uid = os.geteuid()
        for d in [env.queue_dir, *(env.queue_dir / s for s in ("tmp", "msg", "state", "corrupt"))]:
            assert mode(d) == 0o700 and d.lstat().st_uid == uid, d
        files = list((env.queue_dir / "msg").iterdir()) + states()
        assert len(files) == 8
        for f in files:
            assert mode(f) == 0o600 and f.lstat().st_uid == uid, (f, oct(mode(f)))
        assert mode(env.maildrop) == 0o1733
        digest = tmp_path / ".config.toml.digest"
        assert mode(digest) == 0o644  # sendmail reads it as any user; it holds no secret
        status = env.queue_dir / "status.json"
        assert status.exists() and mode(status) & 0o022 == 0
    finally:
        os.umask(old)
        env.stop()


def test_status_json_is_0600_whatever_the_umask(tmp_path: Path, relay_standin: RelayStandin) -> None:
    env = AgentEnv(tmp_path, relay_standin)
    old = os.umask(0o022)
    try:
        env.start()
        status = env.queue_dir / "status.json"
        wait_until(status.exists, timeout=15.0)
        assert mode(status) == 0o600, oct(mode(status))
    finally:
        os.umask(old)
        env.stop()


# --- another user against a running daemon ------------------------------------------------


class World:
    def __init__(self, root: Path, agent: AgentEnv) -> None:
        self.root = root
        self.agent = agent


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # nobody must at least reach the socket: not under pytest's 0700 tmp dirs
    with traversable_tmp("relay-agent-perms-") as root, RelayStandin() as relay:
        agent = AgentEnv(root, relay, extra={"listen": {"socket_mode": "0660", "socket_group": GROUP}})
        agent.config.chmod(0o644)
        agent.start()
        try:
            yield World(root, agent)
        finally:
            agent.stop()


CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1]); print(s.recv(100).decode().strip())\n"
    "except OSError as e:\n"
    "    print('ERR', e.strerror)\n"
)


def test_socket_mode_and_group_follow_the_config(world: World) -> None:
    st = world.agent.socket.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam(GROUP).gr_gid
    outsider = as_other(CONNECT, str(world.agent.socket))
    assert outsider.stdout.strip() == "ERR Permission denied", outsider
    member = as_other(CONNECT, str(world.agent.socket), groups=str(grp.getgrnam(GROUP).gr_gid))
    assert member.stdout.startswith("220"), member


def test_nobody_cannot_open_queue_files(world: World) -> None:
    world.agent.relay.down()  # keep one message in the queue to aim at
    try:
        rcpt = b"held@example.net"
        assert world.agent.sendmail(["-i", rcpt.decode()], MSG % rcpt).returncode == 0
        msg_dir = world.agent.queue_dir / "msg"
        wait_until(lambda: any(msg_dir.iterdir()), timeout=15.0)
        target = next(msg_dir.iterdir())
        code = (
            "import os, sys\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        open(p, 'rb').read() if os.path.basename(p) != 'msg' else os.listdir(p); print('READ')\n"
            "    except OSError as e:\n"
            "        print(e.strerror)\n"
        )
        res = as_other(code, str(target), str(msg_dir), str(world.agent.queue_dir / "status.json"))
        assert res.stdout.splitlines() == ["Permission denied"] * 3, res
    finally:
        world.agent.relay.up()
        world.agent.cli("queue", "flush")
        world.agent.wait_queue_empty()


def test_nobody_gets_one_line_error_from_queue_commands(world: World) -> None:
    for args in (("queue", "list"), ("queue", "list", "--json"), ("status", "--json")):
        res = cli_as_nobody(world.agent.config, *args)
        assert res.returncode != 0, (args, res.stdout)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("relay-agent: "), (args, res.stderr)
        assert "Permission denied" in lines[0] and res.stdout == ""


def test_maildrop_is_writable_not_listable_and_sticky(world: World) -> None:
    """Another user's drop cannot be found (no listing, 128-bit random names) nor removed or replaced."""
    assert mode(world.agent.maildrop) == 0o1733  # as the daemon made it
    # the same kind of directory, where no daemon takes the drops away while we look
    from agent.intake import pickup
    from agent.queue import maildrop_write

    md = world.root / "maildrop-idle"
    pickup.ensure_maildrop(str(md))
    assert mode(md) == 0o1733
    body = b"Subject: s\r\n\r\nx\r\n"
    names = [maildrop_write.write(str(md), 0, "app@example.com", ["x@example.net"], body) for _ in range(2)]
    assert (
        all(len(n) == 32 and all(c in "0123456789abcdef" for c in n) for n in names) and names[0] != names[1]
    )
    code = (
        "import os, sys\n"
        "md, name = sys.argv[1], sys.argv[2]\n"
        "def t(f):\n"
        "    try:\n"
        "        f(); return 'OK'\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        "print(t(lambda: os.listdir(md)))\n"
        "print(t(lambda: open(os.path.join(md, '0' * 32)).read()))\n"
        "print(t(lambda: os.unlink(os.path.join(md, name))))\n"
        "open(os.path.join(md, '.mine'), 'w').close()\n"
        "print(t(lambda: os.rename(os.path.join(md, '.mine'), os.path.join(md, name))))\n"
        "os.unlink(os.path.join(md, '.mine'))\n"
    )
    res = as_other(code, str(md), names[0])
    assert res.returncode == 0, res.stderr
    listing, guess, unlink, replace = res.stdout.splitlines()
    assert listing == "Permission denied"
    assert guess == "No such file or directory"
    assert unlink == "Operation not permitted" and replace == "Operation not permitted"  # sticky
    assert all((md / n).read_bytes().endswith(b"RELAY-AGENT-END\n") for n in names)
