"""The maildrop-first submission path and the pickup trigger FIFO.

Root (who may fsync the 1733 maildrop) writes the maildrop and pokes the daemon even
while it runs, as Postfix's postdrop does; other users hand mail over the socket.
The daemon polls the maildrop only every 5 s when it has a trigger, so a message
that arrives within a second, five times in a row, arrived because of the poke.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import stat
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.intake.pickup_listener import PickupListener
from agent.queue import trigger
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin
from tests.test_sendmail_callers import write_stub

REPO = Path(__file__).resolve().parents[1]

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# --- the FIFO itself ------------------------------------------------------------------


def test_poke_without_a_daemon_is_a_quiet_no_op(tmp_path: Path) -> None:
    fifo = str(tmp_path / "s.sock.pickup")
    trigger.poke(fifo)  # no such file
    os.mkfifo(fifo)
    trigger.poke(fifo)  # a FIFO nobody reads: ENXIO, not a hang
    trigger.poke("")  # no socket configured


def test_poke_never_writes_into_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock.pickup"
    path.write_bytes(b"keep")
    trigger.poke(str(path))
    assert path.read_bytes() == b"keep"


def test_poke_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    os.mkfifo(target)
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    try:
        (tmp_path / "link").symlink_to(target)
        trigger.poke(str(tmp_path / "link"))
        assert trigger.drain(reader) == 0
    finally:
        os.close(reader)


def test_listen_makes_a_fresh_0622_fifo_and_drain_counts_pokes(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.pickup")
    (tmp_path / "s.sock.pickup").write_bytes(b"stale")  # whatever was there is replaced
    old = os.umask(0o077)
    try:
        fd = trigger.listen(path)
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o622
        assert trigger.drain(fd) == 0
        for _ in range(3):
            trigger.poke(path)
        assert trigger.drain(fd) == 3
        assert trigger.drain(fd) == 0  # read-write: never EOF when pokers close
    finally:
        os.close(fd)


# --- the daemon's end: one wake-up per round ------------------------------------------


def waiting_pokes(path: str) -> int:
    """Bytes in the FIFO that the daemon has not read (FIONREAD on a writer's descriptor)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        n = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, n)
        return n[0]
    finally:
        os.close(fd)


async def test_listener_is_woken_once_and_leaves_the_bursts_pokes_unread(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.pickup")
    woken: list[float] = []
    listener = PickupListener(path, lambda: woken.append(time.monotonic()))
    try:
        trigger.poke(path)
        await asyncio.sleep(0.05)
        assert len(woken) == 1 and waiting_pokes(path) == 0
        for _ in range(3):  # the rest of the burst: written, read by nobody, nobody woken
            trigger.poke(path)
        await asyncio.sleep(0.05)
        assert len(woken) == 1 and waiting_pokes(path) == 3
        # the round ends with pokes waiting: another round is due, and we still do not listen
        assert listener.round_done() is True
        assert waiting_pokes(path) == 0
        trigger.poke(path)
        await asyncio.sleep(0.05)
        assert len(woken) == 1 and waiting_pokes(path) == 1
        assert listener.take() is True and listener.take() is False
        # a round that saw no poke: listening again, and the next poke wakes us
        assert listener.round_done() is False
        trigger.poke(path)
        await asyncio.sleep(0.05)
        assert len(woken) == 2 and waiting_pokes(path) == 0
    finally:
        listener.close()
    assert not os.path.exists(path)


async def test_listener_sees_a_poke_that_lands_just_before_it_listens_again(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.pickup")
    woken: list[int] = []
    listener = PickupListener(path, lambda: woken.append(1))
    try:
        trigger.poke(path)
        await asyncio.sleep(0.05)
        assert listener.round_done() is False  # listening again...
        trigger.poke(path)  # ...and this one came before the loop looked: level-triggered
        await asyncio.sleep(0.05)
        assert woken == [1, 1]
    finally:
        listener.close()


# --- through the daemon ------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[AgentEnv]:
    # `nobody` must reach the socket and run sendmail: not under pytest's 0700 tmp dirs
    with traversable_tmp("relay-agent-trigger-") as root, RelayStandin() as relay:
        agent = AgentEnv(root, relay)
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


def test_daemon_owns_the_trigger_while_it_runs(tmp_path: Path, relay_standin: RelayStandin) -> None:
    agent = AgentEnv(tmp_path, relay_standin)
    fifo = Path(trigger.fifo_path(str(agent.socket)))
    agent.start()
    try:
        st = fifo.lstat()
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o622
    finally:
        assert agent.stop() == 0
    assert not fifo.exists()


def test_root_writes_the_maildrop_and_the_poke_brings_it_at_once(site: AgentEnv) -> None:
    relay = site.relay
    assert relay is not None
    for i in range(5):
        rcpt = f"poke{i}-{os.urandom(3).hex()}@example.net"
        t0 = time.monotonic()
        res = site.sendmail(["-i", "-f", "app@example.com", rcpt], crlf(f"Subject: poke {i}\n\nhi\n"))
        assert res.returncode == 0, res.stderr
        wait_until(lambda rcpt=rcpt: any(rcpt in m.rcpt_tos for m in relay.messages), 10)
        assert time.monotonic() - t0 < 1.0, "picked up by the 5 s poll, not by the poke"
    # the daemon's own log says which way each came in
    assert site.log().count("uid=0 (maildrop)") >= 5


def test_a_burst_across_several_rounds_arrives_without_waiting_for_the_poll(site: AgentEnv) -> None:
    """Pokes that come while a round runs are read when it ends and start the next round;
    were they lost, files dropped during a round would wait for the 5 s poll."""
    relay = site.relay
    assert relay is not None
    tag = os.urandom(3).hex()
    rcpts = [f"burst{i}-{tag}@example.net" for i in range(40)]
    for rcpt in rcpts:  # ~20 ms each: the burst outlasts one round's gathering (0.25 s)
        res = site.sendmail(["-i", "-f", "app@example.com", rcpt], crlf("Subject: burst\n\nhi\n"))
        assert res.returncode == 0, res.stderr
    last = time.monotonic()
    wait_until(lambda: all(any(r in m.rcpt_tos for m in relay.messages) for r in rcpts), 10)
    assert time.monotonic() - last < 2.0, "part of the burst waited for the 5 s poll"


def test_other_users_hand_mail_over_the_socket_while_the_daemon_runs(site: AgentEnv) -> None:
    relay = site.relay
    assert relay is not None
    rcpt = f"sock-{os.urandom(3).hex()}@example.net"
    res = subprocess.run(
        [*AS_NOBODY, str(site_sendmail(site)), "-i", "-f", "app@example.com", rcpt],
        input=crlf("Subject: from nobody\n\nhi\n"),
        env=site.env,
        capture_output=True,
        cwd="/",
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in relay.messages), 10)
    # the daemon stored it (its file, so pickup takes the uid it wrote from SO_PEERCRED)
    lines = [ln for ln in site.log().splitlines() if "uid=65534" in ln]
    assert any("(dropped)" in ln for ln in lines) and any("(maildrop)" in ln for ln in lines)
    [msg] = [m for m in relay.messages if rcpt in m.rcpt_tos]
    assert b"from userid 65534" in bytes(msg.data)
    assert not any(n for n in os.listdir(site.maildrop) if not n.startswith("."))


def test_root_gets_cleanups_refusal_before_exit_not_a_quarantine(site: AgentEnv) -> None:
    inner = "From: b@example.com\n\n" + "q" * 1500 + "\n"
    msg = crlf(
        'From: app@example.com\nContent-Type: multipart/mixed; boundary="B"\n\n'
        "--B\nContent-Type: message/rfc822\n\n" + inner + "--B--\n"
    )
    res = site.sendmail(["-i", "-f", "app@example.com", "rfc822@example.net"], msg)
    assert res.returncode == 65
    assert res.stderr.decode().count("\n") == 1 and "998 octets" in res.stderr.decode()
    assert not any(n for n in os.listdir(site.maildrop) if not n.startswith("."))


def site_sendmail(site: AgentEnv) -> Path:
    """The installed stub, on the system python: nobody cannot read root's venv."""
    return write_stub(site.dir / "bin" / "sendmail", "/usr/bin/python3", [str(REPO)])
