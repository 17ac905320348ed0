"""Crash rounds: submitters keep sending while the daemon is SIGKILLed and restarted.

    .venv/bin/python bench/crash_rounds.py [--messages 2000] [--submitters 8] [--kills 20]
                                           [--seed 1] [--code DIR]

Submitters take turns by kind: root `sendmail -t -i` (the maildrop, daemon up or down), SMTP
on the daemon's socket (a client that tries again until it gets its 250), and `nobody`'s
`sendmail` through setpriv (the drop socket while the daemon is up, the maildrop while it is
down). Every message carries a token of its own. Meanwhile the daemon is SIGKILLed at seeded
random moments and started again; then, with the relay healthy, it runs until the queue and
the maildrop are empty, and the relay stand-in's messages are counted:

    lost        tokens that got exit 0 / 250 and never reached the relay (must be 0)
    duplicates  extra copies that reached it (the issue's bound: no more than the kills)
    corrupt     files left in queue/corrupt/ (must be 0: nothing here is corrupt)

`--code DIR` runs another checkout's agent/ (e.g. a `git worktree` of an older commit) with
this venv: PYTHONPATH points the daemon and sendmail there. tests/test_crash_rounds.py runs a
reduced size of the same rounds in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.agent_env import SENDMAIL, AgentEnv, traversable_tmp  # noqa: E402
from tests.support.relay_standin import DEFAULT_PASSWORD, DEFAULT_USER  # noqa: E402

KINDS = ("sendmail", "smtp", "nobody")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
TOKEN = re.compile(rb"X-Crash-Token: (\S+)")
LOGGED = re.compile(r"\[(\d+)\]: ([0-9A-F]{16}): ")
QID = re.compile(rb"\(relay-agent, [^)]*\)\r\n\tid ([0-9A-F]{16});")
SUBMITTED_AGAIN = "submitted again after a lost 250 / exit 0"
REQUEUED = "maildrop file queued again after delivery"
UNRECORDED = "the relay's 250 not recorded before the kill"
SENT_TWICE = "sent twice by one daemon"
SMTP_TRIES = 200  # an SMTP client tries again while the daemon restarts (every 50 ms)


@dataclass(frozen=True)
class Plan:
    messages: int = 2000
    submitters: int = 8
    kills: int = 20
    seed: int = 1
    pause: tuple[float, float] = (0.3, 1.5)  # seconds between a restart and the next kill
    connections: int = 2  # limits.connections: transactions a kill can catch in flight

    @property
    def smtp_clients(self) -> int:
        return sum(1 for s in range(self.submitters) if KINDS[s % len(KINDS)] == "smtp")


@dataclass
class Outcome:
    accepted: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)  # submissions that did not get 0 / 250
    arrived: Counter[str] = field(default_factory=Counter)
    qids: dict[str, list[str]] = field(default_factory=dict)  # token -> queue id of each copy
    corrupt: list[str] = field(default_factory=list)
    kills: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> list[str]:
        return sorted(self.accepted - set(self.arrived))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.arrived.values())

    def causes(self, log: str) -> Counter[str]:
        """Each extra copy by cause, from the queue ids it carried and the daemon's log."""
        events: dict[str, list[tuple[str, str]]] = {}  # qid -> (pid, "pick" | "sent") in log order
        for line in log.splitlines():
            m = LOGGED.search(line)
            if m and ("(maildrop)" in line or "status=sent" in line):
                what = "pick" if "(maildrop)" in line else "sent"
                events.setdefault(m.group(2), []).append((m.group(1), what))
        causes: Counter[str] = Counter()
        for qids in self.qids.values():
            copies = Counter(qids)
            causes[SUBMITTED_AGAIN] += len(copies) - 1  # one queue id per submission
            for qid, n in copies.items():
                causes[_why_again(events.get(qid, []))] += n - 1
        return causes


def message(token: str) -> bytes:
    return (
        f"From: app@example.com\nTo: crash@example.net\nSubject: crash round {token}\n"
        f"X-Crash-Token: {token}\n\nbody of {token}\n"
    ).encode()


def _why_again(seq: list[tuple[str, str]]) -> str:
    """Why one queue id reached the relay more than once, from its log events."""
    kinds = [what for _, what in seq]
    if "sent" in kinds and "pick" in kinds[kinds.index("sent") :]:
        return REQUEUED  # the log: sent, picked up again from the maildrop, sent again
    if any(n > 1 for n in Counter(pid for pid, what in seq if what == "sent").values()):
        return SENT_TWICE
    return UNRECORDED


class RelayProcess:
    """The relay stand-in in a process of its own, as a real relay is: its 250s do not wait for
    this process's threads (its CLI: one JSON line per message it accepted)."""

    host = "127.0.0.1"
    username, password = DEFAULT_USER, DEFAULT_PASSWORD

    def __init__(self, root: Path) -> None:
        self.ca_file = str(root / "relay-ca.pem")
        err = root / "relay.err"  # a file, not a pipe: what it logs can never block it
        cmd = [sys.executable, "-m", "tests.support.relay_standin", "--ca-out", self.ca_file]
        with open(err, "wb") as fh:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=fh)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while b"\n" not in err.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay stand-in did not start: {err.read_text()}")
            time.sleep(0.02)
        first = err.read_bytes().split(b"\n", 1)[0]
        self.port = int(json.loads(first)["listening"].rpartition(":")[2])
        self.datas: list[bytes] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[bytes]) -> None:
        for line in out:
            self.datas.append(json.loads(line)["data"].encode())

    def relay_settings(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "tls": "starttls",
            "username": self.username,
            "ca_file": self.ca_file,
            "timeout": 10,
            "data_timeout": 10,
        }

    def stop(self) -> list[bytes]:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.datas


class UnixClient(smtplib.SMTP):
    """smtplib on the daemon's socket that closes its socket when the connect fails (the daemon
    is down half the time here)."""

    def __init__(self, path: str) -> None:
        super().__init__(timeout=30)
        self.path = path

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.path)
        except BaseException:
            s.close()
            raise
        return s


class Submitter(threading.Thread):
    def __init__(
        self, env: AgentEnv, kind: str, tokens: list[str], out: Outcome, lock: threading.Lock
    ) -> None:
        super().__init__(name=f"submit-{kind}", daemon=True)
        self.env, self.kind, self.tokens, self.out, self.lock = env, kind, tokens, out, lock

    def run(self) -> None:
        for token in self.tokens:
            ok, why = self._smtp(token) if self.kind == "smtp" else self._sendmail(token)
            with self.lock:
                if ok:
                    self.out.accepted.add(token)
                else:
                    self.out.refused.append(f"{self.kind} {token}: {why}")

    def _sendmail(self, token: str) -> tuple[bool, str]:
        cmd = [SENDMAIL, "-t", "-i"]
        if self.kind == "nobody":
            cmd = [*AS_NOBODY, *cmd]
        r = subprocess.run(
            cmd, input=message(token), env=self.env.env, capture_output=True, timeout=60, cwd="/"
        )
        return r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}"

    def _smtp(self, token: str) -> tuple[bool, str]:
        why = ""
        for _ in range(SMTP_TRIES):
            try:
                with UnixClient(str(self.env.socket)) as smtp:
                    smtp.connect("localhost", 0)
                    smtp.sendmail("app@example.com", ["crash@example.net"], message(token))
                return True, ""
            except (OSError, smtplib.SMTPException) as exc:
                why = str(exc)
                time.sleep(0.05)
        return False, why


def run(plan: Plan, root: Path, code: str | None = None) -> Outcome:
    """The rounds in `root` (a directory `nobody` can traverse)."""
    if code:
        os.environ["PYTHONPATH"] = code
    rng = random.Random(plan.seed)
    out = Outcome()
    t0 = time.monotonic()
    relay = RelayProcess(root)
    env = AgentEnv(
        root,
        relay,
        rate=5000,
        extra={"queue": {"retry_initial": 1, "retry_max": 2}, "limits": {"connections": plan.connections}},
    )
    env.config.chmod(0o644)
    try:
        env.start()
        lock = threading.Lock()
        per = [
            [f"s{s}m{m:05d}" for m in range(s, plan.messages, plan.submitters)]
            for s in range(plan.submitters)
        ]
        workers = [Submitter(env, KINDS[s % len(KINDS)], per[s], out, lock) for s in range(plan.submitters)]
        for w in workers:
            w.start()
        for _ in range(plan.kills):
            time.sleep(rng.uniform(*plan.pause))
            env.kill9()
            out.kills += 1
            time.sleep(rng.uniform(0.0, 0.3))  # a moment with no daemon: sendmail uses the maildrop
            env.start()
        for w in workers:
            w.join()
        env.wait_queue_empty(timeout=120)
        env.stop()
    finally:
        if env.proc is not None:  # something failed half-way: no daemon left behind
            env.kill9()
        datas = relay.stop()
    for data in datas:
        for t in TOKEN.findall(data):
            out.arrived[t.decode()] += 1
            out.qids.setdefault(t.decode(), []).extend(q.decode() for q in QID.findall(data))
    out.corrupt = sorted(os.listdir(env.queue_dir / "corrupt"))
    out.seconds = time.monotonic() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--submitters", type=int, default=8)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--code", help="run this checkout's agent/ (PYTHONPATH) instead of this one")
    p.add_argument("--keep", help="run in this (new) directory and keep it: queue, maildrop, daemon.log")
    a = p.parse_args(argv)
    plan = Plan(a.messages, a.submitters, a.kills, a.seed)
    with contextlib.ExitStack() as stack:
        root = Path(a.keep) if a.keep else stack.enter_context(traversable_tmp("relay-agent-crash-"))
        if a.keep:
            root.mkdir(mode=0o755)
        out = run(plan, root, a.code)
        log = (root / "daemon.log").read_text(errors="replace")
    print(f"| crash rounds ({a.code or 'this checkout'}), seed {a.seed} | value |")
    print("|---|---|")
    for what, value in (
        ("messages submitted", plan.messages),
        ("accepted (exit 0 / 250)", len(out.accepted)),
        ("not accepted", len(out.refused)),
        ("SIGKILLs", out.kills),
        ("lost", len(out.lost)),
        ("duplicates", out.duplicates),
        *((f"duplicates: {why}", n) for why, n in sorted(out.causes(log).items())),
        ("issue's bound: duplicates <= SIGKILLs", "met" if out.duplicates <= out.kills else "exceeded"),
        ("corrupt/ files", len(out.corrupt)),
        ("'unacknowledged partial file' log lines", log.count("unacknowledged partial file")),
        ("seconds", f"{out.seconds:.1f}"),
    ):
        print(f"| {what} | {value} |")
    for line in out.refused[:10]:
        print(f"not accepted: {line}", file=sys.stderr)
    for token in [t for t, n in sorted(out.arrived.items()) if n > 1]:
        print(f"duplicate: {token} x{out.arrived[token]}: queue ids {out.qids[token]}", file=sys.stderr)
    return 1 if out.lost else 0


if __name__ == "__main__":
    sys.exit(main())
