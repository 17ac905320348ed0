"""SMTP smuggling: an end-of-data look-alike followed by a second transaction, inside one message.

Each sequence (`\\n.\\n`, `\\r.\\r`, `\\n.\\r\\n`, `\\r\\n.\\n`) is followed by MAIL FROM / RCPT TO /
DATA and a smuggled message, then the real end of data. It goes in every way mail comes in:
SMTP on the Unix socket, SMTP on the loopback listener (`[listen] smtp`), `sendmail -i` as root
(the maildrop) and as nobody (the drop socket), and `sendmail -bs`; the real daemon relays to the
stand-in. Whatever comes in must leave as exactly one message, the smuggled text inside its body,
and the relay must see one MAIL FROM for it.

The body arrives as documented: bare LF and bare CR become CRLF (agent/mail/headers.py to_crlf), and
over SMTP a line (CRLF-delimited) that begins with "." loses that dot (RFC 5321 4.5.2: the
client should have doubled it; the attacker's `\\r\\n.\\n` did not).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mail.headers import to_crlf
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin
from tests.test_sendmail_callers import write_stub

REPO = Path(__file__).resolve().parents[1]
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SEQUENCES = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
}
SENDER = "app@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site() -> Iterator[AgentEnv]:
    # nobody must reach the sockets and run sendmail: not under pytest's 0700 tmp dirs
    with traversable_tmp("relay-agent-smuggling-") as root, RelayStandin() as relay:
        agent = AgentEnv(root, relay, extra={"listen": {"smtp": f"127.0.0.1:{free_port()}"}})
        agent.config.chmod(0o644)
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


def message(seq: bytes, rcpt: str, victim: str) -> tuple[bytes, bytes]:
    """(headers + blank line, body) with the sequence and a whole second transaction in the body."""
    head = f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: smuggling\r\n\r\n".encode()
    body = (
        b"before the look-alike"
        + seq
        + f"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<{victim}>\r\nDATA\r\n".encode()
        + f"From: {SENDER}\r\nTo: {victim}\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n".encode()
    )
    return head, body


def smtp_unstuffed(body: bytes) -> bytes:
    """What an SMTP server makes of DATA sent without dot-stuffing (CRLF lines)."""
    return b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in body.split(b"\r\n"))


def smtp_script(rcpt: str, payload: bytes) -> bytes:
    return (
        f"EHLO client.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        + payload
        + b".\r\nQUIT\r\n"
    )


def smtp_session(sock: socket.socket, rcpt: str, payload: bytes) -> bytes:
    """Commands one at a time, then the DATA payload raw (no stuffing, no line-end fixes)."""
    sock.settimeout(30)
    transcript = b""

    def expect(code: bytes) -> None:
        nonlocal transcript
        buf = b""
        while not any(ln.startswith(code + b" ") for ln in buf.split(b"\r\n")):
            chunk = sock.recv(4096)
            assert chunk, transcript + buf
            buf += chunk
        transcript += buf

    expect(b"220")
    for cmd, code in ((b"EHLO client.test", b"250"), (f"MAIL FROM:<{SENDER}>".encode(), b"250")):
        sock.sendall(cmd + b"\r\n")
        expect(code)
    sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
    expect(b"250")
    sock.sendall(b"DATA\r\n")
    expect(b"354")
    sock.sendall(payload + b".\r\nQUIT\r\n")
    while chunk := sock.recv(4096):
        transcript += chunk
    return transcript


def submit(site: AgentEnv, way: str, rcpt: str, head: bytes, body: bytes) -> bytes:
    """Send one message in the given way; returns what the daemon or sendmail answered."""
    payload = head + body
    if way in ("unix", "tcp"):
        if way == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(site.socket))
        else:
            host, _, port = site.sections["listen"]["smtp"].rpartition(":")
            sock = socket.create_connection((host, int(port)))
        with sock:
            return smtp_session(sock, rcpt, payload)
    if way == "sendmail-bs":
        cmd, stdin = ["-bs"], smtp_script(rcpt, payload)
    else:
        cmd, stdin = ["-i", "-f", SENDER, rcpt], payload
    if way == "sendmail-nobody":
        stub = write_stub(site.dir / "bin" / "sendmail", "/usr/bin/python3", [str(REPO)])
        argv = [*AS_NOBODY, str(stub), *cmd]
        res = subprocess.run(argv, input=stdin, env=site.env, capture_output=True, cwd="/", timeout=30)
    else:
        res = site.sendmail(cmd, stdin)
    assert res.returncode == 0, res
    return res.stdout + res.stderr


WAYS = ["unix", "tcp", "sendmail-root", "sendmail-nobody", "sendmail-bs"]


def cases() -> Iterator[object]:
    for way in WAYS:
        for name, seq in SEQUENCES.items():
            yield pytest.param(way, seq, id=f"{way}-{name}")


@pytest.mark.parametrize(("way", "seq"), list(cases()))
def test_one_message_with_the_smuggled_text_in_its_body(site: AgentEnv, way: str, seq: bytes) -> None:
    relay = site.relay
    assert isinstance(relay, RelayStandin)
    tag = os.urandom(4).hex()
    rcpt, victim = f"rcpt-{tag}@example.net", f"victim-{tag}@example.net"
    head, body = message(seq, rcpt, victim)
    relay.clear()
    answer = submit(site, way, rcpt, head, body)

    def mine() -> list[bytes]:
        return [bytes(m.data) for m in relay.messages if rcpt in m.rcpt_tos or victim in m.rcpt_tos]

    wait_until(lambda: len(mine()) >= 1, timeout=15)
    time.sleep(0.4)  # a smuggled second message is queued with or right behind the first
    got = [m for m in relay.messages if rcpt in m.rcpt_tos or victim in m.rcpt_tos]
    assert len(got) == 1, (answer, [bytes(m.data) for m in got])
    assert tuple(got[0].rcpt_tos) == (rcpt,) and got[0].mail_from == SENDER
    assert len(relay.mail_from_times) == 1, answer  # the relay never saw a second MAIL FROM
    data = bytes(got[0].data)
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    expected = to_crlf(smtp_unstuffed(body) if way in ("unix", "tcp", "sendmail-bs") else body)
    assert data.split(b"\r\n\r\n", 1)[1] == expected
    assert answer.count(b"354") <= 1
