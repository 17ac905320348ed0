"""A big message is received, cleaned, signed and queued a chunk at a time (memory bounded by a
constant): the streamed result is the in-memory one byte for byte, and the real daemon takes a
25 MB message over its socket in a few tens of MB."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.dkim import signing
from agent.dkim.body_hash import RelaxedBodyHash
from agent.dkim.signing import Signer
from agent.errors import AgentError
from agent.intake import pickup
from agent.intake.bodystream import Read
from agent.intake.cleanup import Cleanup, Prepared
from agent.mail import headers
from agent.queue import queue_file
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv, UnixSMTP, wait_until
from tests.support.relay_standin import RelayStandin
from tests.support.verify import dkim_dns_records, verify_dkimpy

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
BODY_TOKENS = [
    b"a",
    b"word",
    b" ",
    b"  ",
    b"\t",
    b" \t ",
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b" \r\n",
    b"\t\r\n",
]
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def dkimpy_bh(body: bytes) -> bytes:
    return base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(body)).digest())


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos : pos + n]
        pos, i = pos + n, i + 1


@QUICK
@given(
    st.lists(st.sampled_from(BODY_TOKENS), max_size=80).map(b"".join),
    st.lists(st.integers(1, 12), min_size=1, max_size=8),
    st.sampled_from([4, 64, 1 << 16]),
)
def test_streaming_body_hash_equals_dkimpys(body: bytes, sizes: list[int], hold: int) -> None:
    # chunk boundaries fall inside CRLFs and runs of blanks; a small `hold` also cuts lines
    hasher = RelaxedBodyHash(hold)
    for piece in pieces(body, sizes):
        hasher.update(piece)
    assert hasher.digest() == dkimpy_bh(body)


def test_streaming_body_hash_of_bodies_with_nothing_but_blanks_and_empty_lines() -> None:
    # (dkimpy's own canonicalization is quadratic in a run of blanks: the runs stay short here)
    bodies = (
        b"",
        b"\r\n",
        b"\r\n" * 5,
        b" " * 3000,
        b"\t \r\n" * 3,
        b"x" + b" \t" * 1500 + b"\r\n\r\n",
        b"\r" * 999,
    )
    for body in bodies:
        for hold in (16, 1 << 16):
            hasher = RelaxedBodyHash(hold)
            for piece in pieces(body, [7, 100, 1]):
                hasher.update(piece)
            assert hasher.digest() == dkimpy_bh(body), body[:20]


def test_a_long_run_of_blanks_costs_linear_time() -> None:
    body = b"x" + b" " * 300_000 + b"y\r\n" + b" " * 300_000 + b"\r\n"
    start = time.monotonic()
    assert signing.relaxed_body(body) == b"x y\r\n"
    hasher = RelaxedBodyHash()
    for piece in pieces(body, [1 << 18]):
        hasher.update(piece)
    assert hasher.digest() == base64.b64encode(hashlib.sha256(b"x y\r\n").digest())
    assert time.monotonic() - start < 1.0


@pytest.fixture
def cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cleanup:
    env = AgentEnv(tmp_path)  # a config with a DKIM key for example.com
    cfg = config.load(str(env.config))
    queue = Queue(cfg.queue.path)
    queue.ensure_dirs()
    # both paths of one comparison must make the same Message-ID and DKIM t=
    monkeypatch.setattr(headers, "make_message_id", lambda host, now: "<fixed@example.com>")
    drafts = Signer.drafts
    monkeypatch.setattr(
        Signer, "drafts", lambda s, m, d, t=None, body_hash=None: drafts(s, m, d, 1_700_000_000, body_hash)
    )
    return Cleanup(cfg, Signer(cfg), queue)


def reader(message: bytes, sizes: list[int]) -> Read:
    it = pieces(message, sizes)
    return lambda n: next(it, b"")


def whole(prepared: Prepared) -> bytes:
    if prepared.spool is None:
        return prepared.message()
    return prepared.message() + Path(prepared.spool.path).read_bytes()


HEADER_LINES = [
    b"From: app@example.com",
    b"From: root (Cron Daemon)",
    b"To: t@example.net",
    b"Subject: two  words\t",
    b" folded on",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
    b"X-Long: " + b"word " * 250,
    b"Content-Type: text/plain",
]
EOLS = [b"\r\n", b"\n", b"\r"]
LINES = st.tuples(st.sampled_from(HEADER_LINES), st.sampled_from(EOLS)).map(b"".join)
BODY = st.lists(st.sampled_from([*BODY_TOKENS, b".", b"x" * 1200, b"=C3=A9"]), max_size=40).map(b"".join)


@QUICK
@given(
    st.lists(LINES, max_size=6), st.sampled_from([b"\r\n", b"\n", b""]), BODY, st.lists(st.integers(1, 40))
)
def test_streamed_cleanup_is_the_in_memory_one_byte_for_byte(
    cleanup: Cleanup, head: list[bytes], blank: bytes, body: bytes, sizes: list[int]
) -> None:
    message = b"".join(head) + blank + body
    args = ("app@example.com", ["t@example.net"])
    kwargs = {"uid": 1000, "origin": "maildrop", "qid": "0123456789ABCDEF", "now": 1_700_000_000.0}
    try:
        expected: bytes | type[AgentError] = whole(cleanup.prepare(*args, message, **kwargs))  # type: ignore[arg-type]
    except AgentError as exc:
        expected = type(exc)
    try:
        streamed = cleanup.prepare_stream(*args, reader(message, sizes or [1 << 20]), len(message), **kwargs)  # type: ignore[arg-type]
    except AgentError as exc:
        assert expected is type(exc)
    else:
        assert whole(streamed) == expected
        streamed.discard()
    assert os.listdir(cleanup.queue.tmp) == []


def big_message(size: int, seed: int = 1) -> bytes:
    """An attachment-style message of about `size` bytes: text, then base64 lines, with the cases
    streaming must get right (dot-stuffed lines, blanks at line ends, empty lines at the end)."""
    rnd = random.Random(seed)
    text = b"Hello,\n\n.a line that starts with a dot\nblanks at the end  \n\tand a tab run\t\t here\n"
    head = (
        b"From: App <app@example.com>\nTo: a@example.net\nSubject: big\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\nContent-Type: text/plain\n\n'
    )
    att = b"--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    raw = rnd.randbytes(max(0, size - len(head) - len(text) - 200) * 3 // 4 // 57 * 57)
    lines = base64.encodebytes(raw)
    return head + text + att + lines + b"--b1--\n\n\n"


def vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_25mb_over_the_socket_in_bounded_memory_arrives_identical_and_signed(
    agent: AgentEnv, relay_standin: RelayStandin
) -> None:
    relay_standin.down()  # intake alone: the message stays queued while its memory is measured
    agent.start()
    assert agent.proc is not None
    message = headers.to_crlf(big_message(25_000_000))  # smtplib sends bytes as they are
    with UnixSMTP(str(agent.socket)) as smtp:
        smtp.sendmail("app@example.com", ["a@example.net"], message)
    hwm = vm(agent.proc.pid, "VmHWM")
    print(f"daemon VmHWM after a {len(message)} byte message: {hwm} kB")
    assert hwm < 100_000
    assert not [n for n in os.listdir(agent.queue_dir / "tmp")]  # the spools are gone
    relay_standin.up()
    agent.cli("queue", "flush")
    got = relay_standin.wait_for(1, timeout=60)[0].data
    assert verify_dkimpy(got, agent.dns_records())
    # what the in-memory path makes of the same message: the same body
    cfg = config.load(str(agent.config))
    cleanup = Cleanup(cfg, Signer(cfg), Queue(cfg.queue.path))
    expected = whole(cleanup.prepare("app@example.com", ["a@example.net"], message))
    assert got.split(b"\r\n\r\n", 1)[1] == expected.split(b"\r\n\r\n", 1)[1]
    assert got.endswith(b"\r\n\r\n" + message.split(b"\r\n\r\n", 1)[1])


def test_over_the_size_limit_is_552_and_leaves_nothing_in_tmp(
    tmp_path: Path, relay_standin: RelayStandin
) -> None:
    env = AgentEnv(tmp_path, relay_standin, extra={"limits": {"max_message_size": 1_000_000}})
    env.start()
    try:
        with UnixSMTP(str(env.socket)) as smtp:
            smtp.ehlo()
            smtp.mail("app@example.com")  # no SIZE=: the limit is found during DATA
            smtp.rcpt("a@example.net")
            assert smtp.data(headers.to_crlf(big_message(3_000_000)))[0] == 552
            assert os.listdir(env.queue_dir / "tmp") == [] and os.listdir(env.queue_dir / "msg") == []
            # the session goes on: a message within the limit (spooled, too) is queued, and what
            # would end DATA early for a lax parser (SMTP smuggling) stays inside it
            for size in (900_000, 2_000):
                smtp.mail("app@example.com")
                smtp.rcpt("a@example.net")
                message = headers.to_crlf(big_message(size)) + SMUGGLE
                assert smtp.data(message)[0] == 250
            # a spool file that cannot be written: 451 after the final dot, and the rest of the
            # data is never taken for commands
            os.rmdir(env.queue_dir / "tmp")
            smtp.mail("app@example.com")
            smtp.rcpt("a@example.net")
            code, reply = smtp.data(headers.to_crlf(big_message(900_000)) + SMUGGLE)
            assert code == 451 and b"cannot write spool file" in reply
            assert smtp.noop()[0] == 250
            os.mkdir(env.queue_dir / "tmp", 0o700)
        got = relay_standin.wait_for(2, timeout=30)
        time.sleep(0.5)
        assert len(relay_standin.messages) == 2
        for m in got:
            assert verify_dkimpy(m.data, env.dns_records())
            assert m.data.count(b"smuggled") == 4 and list(m.rcpt_tos) == ["a@example.net"]
        wait_until(lambda: os.listdir(env.queue_dir / "tmp") == [])
        # a client gone after its final dot while cleanup streams its body: no spool stays behind
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(env.socket))
            raw.sendall(b"EHLO x\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n")
            raw.sendall(headers.to_crlf(big_message(900_000)).replace(b"\r\n.", b"\r\n..") + b".\r\n")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not [
                n for n in os.listdir(env.queue_dir / "tmp") if ".data" not in n
            ]:
                time.sleep(0.001)
        wait_until(lambda: os.listdir(env.queue_dir / "tmp") == [])
    finally:
        env.stop()


SMUGGLE = b"".join(
    end + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nsmuggled\r\n"
    for end in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n")
)


def maildrop_file(tmp_path: Path, message: bytes, end: bytes = queue_file.END) -> str:
    env = queue_file.Envelope("app@example.com", ("a@example.net",), time.time())
    path = tmp_path / "drop1"
    path.write_bytes(queue_file.encode(env, message)[: -len(queue_file.END)] + end)
    return str(path)


def test_big_maildrop_file_is_streamed_to_what_the_in_memory_path_makes(
    tmp_path: Path, cleanup: Cleanup
) -> None:
    message = big_message(2_000_000)
    path = maildrop_file(tmp_path, message)
    picked = pickup.prepare_one(str(tmp_path), "drop1", cleanup, cleanup.queue.corrupt)
    assert isinstance(picked, pickup.Picked) and picked.prepared.spool is not None
    assert picked.size == len(message)
    p = picked.prepared
    expected = cleanup.prepare(
        "app@example.com",
        ["a@example.net"],
        message,
        uid=p.envelope.uid,
        origin="maildrop",
        qid=p.qid,
        now=p.envelope.created,
    )
    assert whole(p) == whole(expected)
    qid = cleanup.queue.enter_batch([(p.envelope, p.content(), p.qid)])[0]
    p.discard()
    assert cleanup.queue.read(str(qid))[1] == whole(expected)
    assert os.path.exists(path)  # removing it is after_commit's job


def test_big_maildrop_file_without_its_end_marker_is_quarantined(tmp_path: Path, cleanup: Cleanup) -> None:
    maildrop_file(tmp_path, big_message(1_000_000), end=b"RELAY-AGENT-EN\n\n")
    got = pickup.prepare_one(str(tmp_path), "drop1", cleanup, cleanup.queue.corrupt)
    assert got is pickup.Skipped.REFUSED
    assert not os.path.exists(tmp_path / "drop1") and len(os.listdir(cleanup.queue.corrupt)) == 1
    assert os.listdir(cleanup.queue.tmp) == []


def test_big_message_with_long_lines_is_made_safe_whole_and_its_body_spooled(cleanup: Cleanup) -> None:
    text = b"From: app@example.com\nSubject: long\n\n" + (b"y" * 1500 + b"\n") * 400
    kwargs = {"qid": "0123456789ABCDEF", "now": 1_700_000_000.0}
    expected = whole(cleanup.prepare("app@example.com", ["t@example.net"], text, **kwargs))  # type: ignore[arg-type]
    streamed = cleanup.prepare_stream(
        "app@example.com",
        ["t@example.net"],
        reader(text, [1 << 16]),
        len(text),
        **kwargs,  # type: ignore[arg-type]
    )
    assert streamed.spool is not None and b"quoted-printable" in streamed.body
    assert whole(streamed) == expected
    assert verify_dkimpy(expected, dkim_dns_records(cleanup.cfg))
    streamed.discard()
    assert os.listdir(cleanup.queue.tmp) == []
