"""Crashes: SIGKILL at random moments loses nothing accepted, never queues a maildrop file
again, repeats only what a kill caught in flight, and leaves nothing in corrupt/ that is not
corrupt.

The rounds are bench/crash_rounds.py's at a reduced size (the full size is a benchmark): root
`sendmail` through the maildrop, SMTP on the socket, and `nobody`'s `sendmail` through the drop
socket, all while the daemon is killed and restarted. The other tests pin the mechanisms the
rounds depend on: a maildrop file whose message is already queued goes at start instead of
being queued again; a queued copy is not sent while its maildrop file is still there; and
whatever a crash left in queue/tmp/ is removed with a line saying what it was, not kept in
corrupt/."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.queue import ids, queue_file
from agent.queue.store import Queue
from bench import crash_rounds
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin


def test_crash_rounds_lose_nothing_and_repeat_only_what_a_kill_caught_in_flight() -> None:
    plan = crash_rounds.Plan(messages=200, submitters=6, kills=5, seed=14, pause=(0.3, 1.0))
    with traversable_tmp("relay-agent-crash-") as root:
        out = crash_rounds.run(plan, root)
        log = (root / "daemon.log").read_text(errors="replace")
    assert out.kills == 5
    assert len(out.accepted) >= plan.messages - out.kills, out.refused  # at most one hand-over per kill
    assert out.lost == [], (out.lost, log[-3000:])
    causes = out.causes(log)
    # the identity of a maildrop file survives restarts: never queued again, never sent twice
    assert causes[crash_rounds.REQUEUED] == 0 and causes[crash_rounds.SENT_TWICE] == 0, causes
    # what is left are the two windows no SMTP peer can close, at most one transaction each per kill:
    # a relay's 250 for a final dot we wrote before the kill, and a 250 we never got to send
    assert causes[crash_rounds.UNRECORDED] <= out.kills * plan.connections, causes
    assert causes[crash_rounds.SUBMITTED_AGAIN] <= out.kills * plan.smtp_clients, causes
    assert out.corrupt == []
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]


def test_maildrop_file_of_an_already_queued_message_is_removed_at_start(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    """A daemon killed between entering a maildrop file and unlinking it left both."""
    env = AgentEnv(tmp_path, relay_standin)
    for i in range(5):  # daemon down: sendmail writes the maildrop
        r = env.sendmail(["-i", f"left{i}@example.net"], b"From: app@example.com\n\nleft over\n")
        assert r.returncode == 0, r.stderr
    q = Queue(str(env.queue_dir))
    q.ensure_dirs()
    names = sorted(os.listdir(env.maildrop))
    qids = []
    for name in names:  # what the killed daemon had entered: the queue file of each
        path = env.maildrop / name
        env_, message = queue_file.decode(path.read_bytes())
        qids.append(q.enter(env_, message, ids.qid_for(name, os.lstat(path), q.key())))
    env.start()
    try:
        got = relay_standin.wait_for(5, timeout=15)
        env.wait_queue_empty()
    finally:
        env.stop()
    assert sorted(m.rcpt_tos[0] for m in got) == [f"left{i}@example.net" for i in range(5)]
    assert len(relay_standin.messages) == 5
    log = env.log()
    for qid, name in zip(qids, names, strict=True):
        assert f"{qid}: maildrop file {name} removed: queued before the restart" in log
        assert log.count(f"{qid}: to=<") == 1  # sent once, never picked up again


def test_a_queued_copy_is_not_sent_while_its_maildrop_file_cannot_be_removed(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    """An immutable maildrop file (chattr +i: even root's unlink fails) keeps its queued copy
    from the scheduler, in the daemon that queued it and in the next one; once the file can go,
    the message goes, once."""
    env = AgentEnv(tmp_path, relay_standin)
    assert env.sendmail(["-i", "held@example.net"], b"From: app@example.com\n\nheld\n").returncode == 0
    [name] = os.listdir(env.maildrop)
    path = env.maildrop / name
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("this file system has no immutable files")
    try:
        env.start()
        wait_until(lambda: any((env.queue_dir / "msg").iterdir()) or relay_standin.messages != [])
        env.poke()  # another round: still there, still held
        time.sleep(1.0)
        assert relay_standin.messages == [] and len(os.listdir(env.queue_dir / "msg")) == 1
        assert f"maildrop file {name} not removed yet: Operation not permitted" in env.log()
        env.kill9()
        env.start()
        time.sleep(1.0)
        assert relay_standin.messages == []
        assert f"maildrop file {name} already queued, cannot be removed: Operation not permitted" in env.log()
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    env.poke()
    relay_standin.wait_for(1)
    env.wait_queue_empty()
    env.stop()
    assert len(relay_standin.messages) == 1


def test_recover_removes_unacknowledged_tmp_files_saying_what_each_was(tmp_path: Path) -> None:
    q = Queue(str(tmp_path / "queue"))
    q.ensure_dirs()
    full = queue_file.encode(
        queue_file.Envelope("a@b.c", ("d@e.f",), 1.0, (), 0), b"Subject: x\r\n\r\nhi\r\n"
    )
    tmp = Path(q.tmp)
    (tmp / "1D28CC186EFBB1EB").write_bytes(full)  # complete, just never renamed: still removed
    (tmp / "1D28CC186EFBB1EC.spool").write_bytes(full[:20])
    (tmp / "odd\nname").write_bytes(b"?")
    (tmp / "adir").mkdir()
    (tmp / "adir" / "f").write_bytes(b"x")
    notes = q.recover()
    assert os.listdir(q.tmp) == [] and os.listdir(q.corrupt) == []
    assert len(notes) == 4 and all("\n" not in n and "never acknowledged" in n for n in notes)
    by_name = {n.split(":", 1)[0]: n for n in notes}
    assert "a queue file being entered" in by_name["tmp/1D28CC186EFBB1EB"]
    assert "a message being received (spool)" in by_name["tmp/1D28CC186EFBB1EC.spool"]
    assert "an unfinished temporary file" in by_name["tmp/odd?name"]
    assert "tmp/adir" in by_name


def test_a_crash_leaves_no_copy_of_delivered_mail_in_corrupt(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    """What the issue saw: tmp/ files from a kill ended up as full copies in corrupt/."""
    env = AgentEnv(tmp_path, relay_standin)
    env.start()
    os.makedirs(env.queue_dir / "tmp", exist_ok=True)
    (env.queue_dir / "tmp" / "1D28CC186EFBB1EB").write_bytes(b"RELAY-AGENT-QUEUE 1\n")  # as a kill leaves it
    env.kill9()
    env.start()
    wait_until(lambda: "tmp/1D28CC186EFBB1EB: removed a queue file being entered" in env.log())
    env.stop()
    assert os.listdir(env.queue_dir / "corrupt") == []
    assert os.listdir(env.queue_dir / "tmp") == []
