"""sendmail holds a message once: read and made CRLF a chunk at a time, its header block
edited apart from its body, and written or sent in the parts it is held in.

The chunked path must give byte for byte what the whole-message code it replaced gave
(kept here as the reference) for any input and any cut into chunks; and a 20 MB message
must cost the process about its size, not several times it.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import MessageError, TooBigError
from agent.mail import headers, smtp_text
from agent.submit import sendmail, socket_client, submission
from agent.submit.stdin_message import longest_line, read_rest
from tests.support.agent_env import AgentEnv, traversable_tmp
from tests.test_sendmail_fallback import AS_NOBODY, PYTHON, StandIn, drop_reply, drop_socket, drops

# --- the whole-message code this replaced ---------------------------------------------------


def old_read_message(stream: io.BytesIO, ignore_dots: bool, limit: int) -> bytes:
    if ignore_dots:
        data = stream.read(limit + 1)
    else:
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            line = stream.readline(limit + 2 - size)
            if not line or line in (b".\n", b".\r\n", b"."):
                break
            parts.append(line)
            size += len(line)
        data = b"".join(parts)
    if len(data) > limit:
        raise TooBigError(f"message exceeds the size limit of {limit} bytes (limits.max_message_size)")
    return data


def old_normalize(data: bytes) -> bytes:
    if b"\0" in data:
        raise MessageError("message contains NUL bytes")
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1 :]
    return headers.to_crlf(data)


def old_prepare(message: bytes, sender: str, extract: bool) -> tuple[list[str], bytes]:
    """sendmail.prepare as it was, on the whole message (recipients not resolved: compared raw)."""
    wanted = headers.recipients_for_t(message) if extract else []
    message = headers.rewrite_from(headers.strip_bcc(message), lambda addr: addr.replace("old", "new"))
    return wanted, headers.add_missing(message, sender, "Full Name", "host.example", 1.7e9)


def new_prepare(message: list[bytes], sender: str, extract: bool) -> tuple[list[str], bytes]:
    """What submission.prepare does to the first part, with the same stand-ins as old_prepare."""
    head = message[0]
    wanted = headers.recipients_for_t(head) if extract else []
    head = headers.rewrite_from(headers.strip_bcc(head), lambda addr: addr.replace("old", "new"))
    message[0] = headers.add_missing(head, sender, "Full Name", "host.example", 1.7e9)
    return wanted, b"".join(message)


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except MessageError as exc:  # TooBigError too
        return (type(exc).__name__, exc.message)


# --- messages with every awkward byte in awkward places -------------------------------------

LINES = st.sampled_from(
    [
        b"From someone@example.com Mon Jan  1 00:00:00 2024",
        b"From: Old <old@example.com>",
        b"To: a@example.net, b@example.net",
        b"Bcc: hidden@example.net",
        b"Cc: c@example.net",
        b"Resent-To: r@example.net",
        b"Subject: hello",
        b" folded continuation",
        b"\tanother continuation",
        b"Message-ID: <x@y>",
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
        b"",
        b".",
        b"..dots",
        b"body text",
        b"not a header line",
        b"X-Nul: a\0b",
        b"y" * 1000,
    ]
)
ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\r", b""])


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(LINES, ENDINGS), max_size=30))
    return b"".join(line + end for line, end in lines)


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@contextlib.contextmanager
def small_chunks() -> Iterator[None]:
    """Chunks of a few bytes: every boundary case turns up in a short message."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sendmail, "CHUNK", 9)
        mp.setattr(socket_client, "CHUNK", 5)
        yield


def cut_read(pieces: list[bytes]) -> list[bytes]:
    """The message read in the given pieces: any cut at all."""
    return read_rest(pieces[0], iter(pieces[1:]), 1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.data(), raw_messages(), st.booleans(), st.integers(0, 400))
def test_read_and_normalize_in_chunks_give_what_the_whole_message_gave(
    data: st.DataObject, raw: bytes, ignore_dots: bool, limit: int
) -> None:
    def old() -> bytes:
        return old_normalize(old_read_message(io.BytesIO(raw), ignore_dots, limit))

    def new() -> bytes:
        return b"".join(sendmail.read_message(io.BytesIO(raw), ignore_dots, limit))

    with small_chunks():
        assert outcome(new) == outcome(old)
        # and cut anywhere at all
        assert outcome(lambda: b"".join(cut_read(data.draw(cuts(raw))))) == outcome(old_normalize, raw)


@settings(max_examples=300, deadline=None)
@given(st.data(), raw_messages(), st.booleans())
def test_the_header_block_is_edited_as_when_the_message_was_whole(
    data: st.DataObject, raw: bytes, extract: bool
) -> None:
    raw = raw.replace(b"\0", b"")
    whole = old_normalize(raw)
    with small_chunks():
        message = cut_read(data.draw(cuts(raw)))
    end = headers.parse(whole)[1]
    assert message[0] == whole[: end + 2 if whole.startswith(b"\r\n", end) else end]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(headers, "make_message_id", lambda hostname, now: "<fixed@host.example>")
        new = outcome(new_prepare, message, "s@example.com", extract)
        assert new == outcome(old_prepare, whole, "s@example.com", extract)


class Sent:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.writes.append(data)


@settings(max_examples=300, deadline=None)
@given(st.data(), raw_messages())
def test_dot_stuffing_in_chunks_is_dot_stuff(data: st.DataObject, raw: bytes) -> None:
    whole = headers.to_crlf(raw)
    sent = Sent()
    with small_chunks():
        socket_client.send_stuffed(sent, data.draw(cuts(whole)))  # type: ignore[arg-type]
    assert b"".join(sent.writes) == smtp_text.dot_stuff(whole)
    assert all(len(w) <= 3 * 5 + 3 for w in sent.writes)  # about a chunk at a time, never all
    assert longest_line(data.draw(cuts(whole))) == max(map(len, whole.split(b"\n")))


def test_a_small_message_is_one_write() -> None:
    sent = Sent()
    socket_client.send_stuffed(sent, [b"Subject: x\r\n\r\n", b".hi\r\n"])  # type: ignore[arg-type]
    assert sent.writes == [b"Subject: x\r\n\r\n..hi\r\n.\r\n"]
    message = sendmail.read_message(io.BytesIO(b"Subject: x\n\nhi\n"), True, 1000)
    assert message == [b"Subject: x\r\n\r\nhi\r\n"]
    assert submission.framed("a@example.com", ["b@example.net"], message, ())[0].endswith(
        b"hi\r\nRELAY-AGENT-END\n"
    )
    assert len(submission.framed("a@example.com", ["b@example.net"], message, ())) == 1


# --- the process's peak memory for a 20 MB message ------------------------------------------

PEAK_RSS = """
import os, sys
pid = os.fork()
if pid == 0:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    os.dup2(fd, 0)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), ru.ru_maxrss * 1024)
"""


def peak_rss(message: Path, cmd: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Exit status and peak RSS (bytes) of cmd with `message` on stdin. Forked by a small
    python, not by pytest: a child starts with its parent's RSS as its high-water mark."""
    launcher = [sys.executable, "-S", "-E", "-c", PEAK_RSS, str(message), *cmd]
    out = subprocess.run(launcher, env=env, capture_output=True, timeout=120, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.fixture
def big_site() -> Iterator[tuple[AgentEnv, Path]]:
    with traversable_tmp("rss-") as d:
        site = AgentEnv(d, None, extra={"limits": {"max_message_size": 30_000_000}})
        site.socket.parent.mkdir(mode=0o755)
        site.maildrop.mkdir()
        site.maildrop.chmod(0o1733)
        big = d / "big.eml"
        line = b"%08d: a line of the body, as long as most lines in mail are, give or take a bit\n"
        with big.open("wb") as fh:
            fh.write(b"From: app@example.com\nTo: big@example.net\nSubject: big\n\n")
            for i in range(250_000):
                fh.write(line % i)
        big.chmod(0o644)
        yield site, big


@pytest.mark.parametrize("way", ["maildrop-root", "drop-socket-nobody"])
def test_a_20_mb_message_costs_sendmail_about_its_size(big_site: tuple[AgentEnv, Path], way: str) -> None:
    site, big = big_site
    size = big.stat().st_size
    cmd = [PYTHON, "-S", "-E", "-c", WRAPPER.format(repo=str(Path(__file__).parents[1]))]
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(site.config)}
    standin = None
    if way == "drop-socket-nobody":
        cmd = AS_NOBODY + cmd
        standin = StandIn(drop_socket(site), drop_reply(b"250 2.0.0 Ok: queued as X"))
    try:
        code, rss = peak_rss(big, cmd, env)
    finally:
        if standin is not None:
            standin.close()
    assert code == 0
    # the interpreter and sendmail's modules take ~8 MB; the whole-message code took 3.4 times
    # the message (71 MB for 21 MB)
    assert rss < size + (16 << 20), f"peak RSS {rss >> 20} MB for a {size >> 20} MB message"
    if way == "maildrop-root":
        [(_, env_, msg)] = drops(site)
        body = big.read_bytes().split(b"\n\n", 1)[1].replace(b"\n", b"\r\n")
        assert env_.recipients == ("big@example.net",) and msg.endswith(b"\r\n\r\n" + body)


WRAPPER = """
import sys
sys.path[0:1] = [{repo!r}]
from agent.submit.sendmail import main
sys.exit(main(["-t", "-i"], "sendmail"))
"""


def test_the_drop_socket_gets_the_message_in_parts_not_one_copy(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    got: list[bytes] = []

    def serve(conn: object) -> None:
        import socket

        assert isinstance(conn, socket.socket)
        while chunk := conn.recv(65536):
            got.append(chunk)
        conn.sendall(b"250 ok\r\n")

    standin = StandIn(path, serve)
    try:
        socket_client.hand_over(str(path), b"a" * 100_000, b"b" * 100_000, b"END\n")
    finally:
        standin.close()
    assert b"".join(got) == b"a" * 100_000 + b"b" * 100_000 + b"END\n"
    assert os.path.exists(path)
