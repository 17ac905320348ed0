"""A really full disk: the queue and the maildrop on a 4 MB tmpfs, real ENOSPC (min_free = 0).

Submissions past the space are refused for now (452 over SMTP, exit 75 from `sendmail`, one
line), nothing accepted before is lost, and once deliveries free the space everything is
delivered exactly once. Needs root (CI runs as root) to mount the tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.agent_env import SENDMAIL, AgentEnv, UnixSMTP, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
BODY_LINES = 3000  # ~230 KB a message: about sixteen fill the 4 MB
WAYS = ("smtp", "root", "nobody")
TOKEN = re.compile(rb"X-Disk-Token: (\S+)")


@contextlib.contextmanager
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with traversable_tmp("relay-agent-disk-") as root:
        spool = root / "spool"
        spool.mkdir(mode=0o755)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(spool)], capture_output=True
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
        try:
            yield root
        finally:
            subprocess.run(["umount", "-l", str(spool)], check=False)


def message(token: str) -> bytes:
    line = f"{token} fills the disk, line after line of it, until there is no room left.\n"
    return (
        f"From: app@example.com\nTo: disk@example.net\nX-Disk-Token: {token}\n\n{line * BODY_LINES}".encode()
    )


def by_smtp(env: AgentEnv, token: str) -> tuple[int, str]:
    with UnixSMTP(str(env.socket)) as smtp:
        try:
            smtp.sendmail("app@example.com", ["disk@example.net"], message(token).replace(b"\n", b"\r\n"))
        except smtplib.SMTPDataError as exc:
            text = exc.smtp_error
            return exc.smtp_code, text.decode(errors="replace") if isinstance(text, bytes) else text
    return 250, ""


def by_sendmail(env: AgentEnv, token: str, nobody: bool) -> subprocess.CompletedProcess[bytes]:
    cmd = [*AS_NOBODY, SENDMAIL, "-t", "-i"] if nobody else [SENDMAIL, "-t", "-i"]
    return subprocess.run(cmd, input=message(token), env=env.env, capture_output=True, timeout=60, cwd="/")


class Run(NamedTuple):
    accepted: list[str]  # exit 0 / 250 while the disk filled
    refused: dict[str, str]  # "way token" -> the reply or sendmail's stderr
    again: list[str]  # the refused ones, submitted again once there was room
    arrived: Counter[str]
    corrupt: list[str]
    log: str


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with small_disk() as root, RelayStandin() as relay:
        yield fill_then_free(root, relay)


def fill_then_free(root: Path, relay: RelayStandin) -> Run:
    spool = root / "spool"
    env = AgentEnv(
        root,
        relay,
        extra={
            "queue": {"path": str(spool / "queue"), "maildrop": str(spool / "maildrop"), "min_free": 0},
            "limits": {"max_message_size": 1_000_000},
        },
    )
    env.queue_dir, env.maildrop = spool / "queue", spool / "maildrop"
    env.config.chmod(0o644)
    relay.down()  # nothing leaves: the disk fills
    env.start()
    accepted: list[str] = []
    refused: dict[str, str] = {}
    try:
        for i in range(40):  # far more than fits; the three ways in take turns
            token, way = f"d{i:02d}", WAYS[i % 3]
            if way == "smtp":
                code, text = by_smtp(env, token)
                ok, why = code == 250, f"{code} {text}"
            else:
                r = by_sendmail(env, token, nobody=way == "nobody")
                ok, why = r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
            (accepted.append(token) if ok else refused.update({f"{way} {token}": why}))
        relay.up()  # deliveries free the space
        env.cli("queue", "flush")
        wait_until(lambda: set(_arrived(relay)) >= set(accepted), timeout=60)
        env.wait_queue_empty(timeout=30)
        again = [t.split()[1] for t in refused]
        for n, token in enumerate(again):  # what was refused is taken now
            r = by_sendmail(env, token, nobody=False)
            assert r.returncode == 0, r.stderr
            # one at a time, as callers retrying over time do: with min_free = 0 a burst of
            # maildrop files could fill this 4 MB disk by itself, and pickup needs room for a
            # copy before it removes one (a real min_free keeps sendmail from doing that)
            wait_until(lambda n=n: len(set(_arrived(relay)) & set(again)) > n, timeout=30)
        wait_until(lambda: set(_arrived(relay)) >= set(accepted + again), timeout=60)
        env.wait_queue_empty(timeout=30)
    finally:
        env.stop()
    corrupt = os.listdir(env.queue_dir / "corrupt")
    return Run(accepted, refused, again, _arrived(relay), corrupt, env.log())


def test_full_disk_loses_nothing_and_delivers_everything_once(run: Run) -> None:
    assert len(run.accepted) >= 8, run.refused
    assert {way.split()[0] for way in run.refused} == set(WAYS), run.refused  # each way in was refused
    assert set(run.arrived) == set(run.accepted + run.again)
    assert [t for t, n in run.arrived.items() if n > 1] == []
    assert run.corrupt == []
    assert "Traceback" not in run.log


def test_full_disk_sendmail_exits_75_with_one_line(run: Run) -> None:
    for way, why in run.refused.items():
        if not way.startswith("smtp"):
            assert why.startswith("exit 75: ") and why.count("\n") == 1, (way, why)


def test_full_disk_smtp_refuses_with_452(run: Run) -> None:
    replies = [why for way, why in run.refused.items() if way.startswith("smtp")]
    assert replies and all(r.startswith("452 ") for r in replies), replies


def _arrived(relay: RelayStandin) -> Counter[str]:
    got: Counter[str] = Counter()
    for m in relay.messages:
        got.update(t.decode() for t in TOKEN.findall(m.data))
    return got
