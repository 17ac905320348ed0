"""Local submission under attack: hostile maildrop entries and CR/LF/NUL injection.

One real daemon (root, as in CI) serves the whole module from a directory other
users can traverse, so `nobody` can submit too. After every attack the daemon
must still be running and still deliver, the hostile entry must be gone from the
maildrop (moved to corrupt/ or removed) with a log line, and nothing outside the
maildrop may have been read or changed.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.queue import queue_file
from tests.support.agent_env import AgentEnv, traversable_tmp, wait_until
from tests.support.relay_standin import RelayStandin
from tests.test_sendmail_callers import write_stub

REPO = Path(__file__).resolve().parents[1]
MARKER = b"TOP-SECRET-MARKER-7d1f0c"
MAX_SIZE = 100_000
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"


class Site:
    def __init__(self, root: Path, relay: RelayStandin, agent: AgentEnv) -> None:
        self.root = root
        self.relay = relay
        self.agent = agent
        self.secret = root / "outside" / "secret.txt"
        self.counter = 0

    @property
    def maildrop(self) -> Path:
        return self.agent.maildrop

    @property
    def corrupt(self) -> Path:
        return self.agent.queue_dir / "corrupt"

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter:03d}{os.urandom(4).hex()}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    # `nobody` must reach the maildrop: not under pytest's 0700 tmp dirs
    with traversable_tmp("relay-agent-sec-") as root, RelayStandin() as relay:
        agent = AgentEnv(root, relay, extra={"limits": {"max_message_size": MAX_SIZE}})
        s = Site(root, relay, agent)
        s.secret.parent.mkdir(mode=0o700)
        s.secret.write_bytes(b"root only: " + MARKER + b"\n")
        s.secret.chmod(0o600)
        agent.start()
        try:
            yield s
        finally:
            agent.stop()


def secret_fingerprint(site: Site) -> tuple[bytes, int, int, int, int]:
    st = site.secret.lstat()
    return site.secret.read_bytes(), st.st_mode, st.st_nlink, st.st_mtime_ns, st.st_size


def wait_handled(site: Site, name: str) -> None:
    site.agent.poke()  # an attacker may poke too: the trigger FIFO is 0622 like Postfix's
    path = site.maildrop / name
    wait_until(lambda: not os.path.lexists(path))


def quarantined(site: Site, name: str) -> list[Path]:
    return [p for p in site.corrupt.iterdir() if p.name.startswith(f"maildrop-{name}.")]


def assert_logged(site: Site, *words: str) -> None:
    wait_until(lambda: any(all(w in line for w in words) for line in site.agent.log().splitlines()), 5)


def assert_healthy(site: Site) -> None:
    """The daemon runs and still delivers an ordinary message end to end."""
    assert site.agent.proc is not None and site.agent.proc.poll() is None, site.agent.log()
    rcpt = f"{site.unique('ok')}@example.net"
    res = site.agent.sendmail(["-i", rcpt], b"From: app@example.com\nSubject: ok\n\nfine\n")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))


def assert_marker_nowhere(site: Site) -> None:
    for m in site.relay.messages:
        assert MARKER not in m.data
    for dirpath, _, files in os.walk(site.agent.queue_dir):
        for f in files:
            p = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(p).st_mode) and os.lstat(p).st_nlink == 1:
                with open(p, "rb") as fh:
                    assert MARKER not in fh.read(), p


def queue_file_bytes(rcpts: list[str], body: bytes, sender: str = "app@example.com", uid: int = 0) -> bytes:
    return queue_file.encode(queue_file.Envelope(sender, tuple(rcpts), time.time(), (), uid), body)


def good_body(subject: str) -> bytes:
    return f"From: app@example.com\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def drop_bytes(site: Site, name: str, data: bytes) -> Path:
    tmp = site.maildrop / f".t{name}"
    tmp.write_bytes(data)
    os.rename(tmp, site.maildrop / name)
    site.agent.poke()
    return site.maildrop / name


# --- hostile entries -------------------------------------------------------------


def test_symlink_to_secret_is_moved_not_followed(site: Site) -> None:
    before = secret_fingerprint(site)
    name = site.unique("link")
    (site.maildrop / name).symlink_to(site.secret)
    wait_handled(site, name)
    [moved] = quarantined(site, name)
    assert moved.is_symlink() and os.readlink(moved) == str(site.secret)
    assert_logged(site, f"maildrop file {name}", "symbolic link")
    assert secret_fingerprint(site) == before
    assert_healthy(site)
    assert_marker_nowhere(site)


def test_hard_link_is_removed_and_target_untouched(site: Site) -> None:
    before = secret_fingerprint(site)
    name = site.unique("hard")
    os.link(site.secret, site.maildrop / name)
    wait_handled(site, name)
    assert quarantined(site, name) == []  # corrupt/ keeps no second name for someone else's file
    assert_logged(site, f"maildrop file {name} removed", "2 hard links")
    assert secret_fingerprint(site) == before  # nlink back to 1, content and mtime intact
    assert_healthy(site)
    assert_marker_nowhere(site)


def test_fifo_does_not_block_the_daemon(site: Site) -> None:
    name = site.unique("fifo")
    os.mkfifo(site.maildrop / name)
    wait_handled(site, name)
    [moved] = quarantined(site, name)
    assert stat.S_ISFIFO(moved.lstat().st_mode)
    assert_logged(site, f"maildrop file {name}", "not a regular file")
    assert_healthy(site)


def test_directory_is_removed_without_following_links_inside(site: Site) -> None:
    before = secret_fingerprint(site)
    name = site.unique("dir")
    d = site.maildrop / name
    d.mkdir()
    (d / "inner").write_bytes(queue_file_bytes(["x@example.net"], good_body("in a dir")))
    (d / "to-secret").symlink_to(site.secret)
    (d / "sub").symlink_to(site.secret.parent, target_is_directory=True)
    wait_handled(site, name)
    assert quarantined(site, name) == []
    assert_logged(site, f"maildrop file {name} removed", "a directory")
    assert secret_fingerprint(site) == before and site.secret.parent.is_dir()
    assert_healthy(site)
    assert not any(m.data.endswith(b"hello\r\n") and b"in a dir" in m.data for m in site.relay.messages)


def test_oversized_message_is_quarantined(site: Site) -> None:
    name = site.unique("big")
    drop_bytes(site, name, queue_file_bytes(["big@example.net"], good_body("big") + b"x" * MAX_SIZE))
    wait_handled(site, name)
    assert len(quarantined(site, name)) == 1
    assert_logged(site, f"maildrop file {name} quarantined", "size limit")
    assert_healthy(site)
    assert not any("big@example.net" in m.rcpt_tos for m in site.relay.messages)


def test_huge_sparse_file_is_refused_before_reading(site: Site) -> None:
    name = site.unique("sparse")
    path = site.maildrop / name
    with open(path, "wb") as fh:
        fh.truncate(50 << 30)  # 50 GiB of nothing: reading it would take the daemon down
    wait_handled(site, name)
    assert len(quarantined(site, name)) == 1
    assert_logged(site, f"maildrop file {name} quarantined", "too large")
    assert_healthy(site)


def test_garbage_bytes_are_quarantined(site: Site) -> None:
    name = site.unique("junk")
    drop_bytes(site, name, os.urandom(4096))
    wait_handled(site, name)
    [moved] = quarantined(site, name)
    assert moved.stat().st_size == 4096  # kept for a human, not deleted
    assert_logged(site, f"maildrop file {name} quarantined")
    assert_healthy(site)


def test_truncated_queue_file_is_quarantined(site: Site) -> None:
    name = site.unique("trunc")
    whole = queue_file_bytes(["trunc@example.net"], good_body("truncated"))
    drop_bytes(site, name, whole[: -len(queue_file.END)])
    wait_handled(site, name)
    assert len(quarantined(site, name)) == 1
    assert_logged(site, f"maildrop file {name} quarantined", "end marker")
    assert_healthy(site)
    assert not any("trunc@example.net" in m.rcpt_tos for m in site.relay.messages)


@pytest.mark.parametrize(
    ("field", "words"),
    [
        (b"rcpt inj@example.net\rRCPT TO:<evil@example.org>", "control character"),
        (b"rcpt inj@example.net\0evil@example.org", "control character"),
        (b"sender app@example.com\rRCPT TO:<evil@example.org>\nrcpt inj@example.net", "control character"),
        (b"rcpt inj@example.net\nRCPT TO:<evil@example.org>", "unknown envelope field"),
    ],
    ids=["cr-in-rcpt", "nul-in-rcpt", "cr-in-sender", "lf-makes-a-bogus-field"],
)
def test_envelope_injection_is_quarantined(site: Site, field: bytes, words: str) -> None:
    name = site.unique("inj")
    body = good_body("inject")
    head = b"RELAY-AGENT-QUEUE 1\ncreated 1\n"
    if not field.startswith(b"sender"):
        head += b"sender app@example.com\n"
    head += field + b"\n" + f"size {len(body)}\n\n".encode()
    drop_bytes(site, name, head + body + queue_file.END)
    wait_handled(site, name)
    assert len(quarantined(site, name)) == 1
    assert_logged(site, f"maildrop file {name} quarantined", words)
    assert_healthy(site)
    for m in site.relay.messages:
        assert "evil@example.org" not in m.rcpt_tos and "inj@example.net" not in m.rcpt_tos


def test_attacker_chosen_file_name_cannot_forge_log_lines(site: Site) -> None:
    name = site.unique("x") + "\nrelay-agent[1]: FORGED0000000001: to=<boss@example.net>, status=sent"
    drop_bytes(site, name, b"garbage")
    wait_handled(site, name)
    assert not any(line.startswith("relay-agent[1]: FORGED") for line in site.agent.log().splitlines())
    assert_logged(site, "FORGED0000000001", "quarantined")
    assert_healthy(site)


def test_stale_dot_file_removed_fresh_one_kept(site: Site) -> None:
    stale = site.maildrop / f".t{site.unique('stale')}"
    fresh = site.maildrop / f".t{site.unique('fresh')}"
    for p in (stale, fresh):
        p.write_bytes(queue_file_bytes(["dot@example.net"], good_body("dot")))
    old = time.time() - 7200
    os.utime(stale, (old, old))
    site.agent.poke()
    wait_until(lambda: not stale.exists())
    assert_logged(site, "removed stale temporary file", stale.name)
    assert_healthy(site)  # a few pickup rounds later, the sendmail still writing it is left alone
    assert fresh.exists()
    fresh.unlink()
    assert not any("dot@example.net" in m.rcpt_tos for m in site.relay.messages)


def test_200_garbage_files_do_not_stop_delivery(site: Site) -> None:
    names = [site.unique("flood") for _ in range(200)]
    for n in names:
        drop_bytes(site, n, os.urandom(64))
    legit = site.unique("legit")
    drop_bytes(site, legit, queue_file_bytes([f"{legit}@example.net"], good_body("among garbage")))
    t0 = time.monotonic()
    assert_healthy(site)  # through the socket, while pickup chews
    wait_until(lambda: any(f"{legit}@example.net" in m.rcpt_tos for m in site.relay.messages), 30)
    wait_until(lambda: not any(os.path.lexists(site.maildrop / n) for n in names), 30)
    assert time.monotonic() - t0 < 30
    assert sum(len(quarantined(site, n)) for n in names) == 200


# --- other users ---------------------------------------------------------------------


def received_uid(data: bytes) -> bytes:
    for line in data.split(b"\r\n"):
        if line.startswith(b"Received: by") and b"relay-agent" in line:
            return line
    raise AssertionError(data[:500])


def test_other_users_sendmail_via_maildrop_names_their_uid(site: Site) -> None:
    # sendmail falls back to the maildrop when it cannot reach the daemon: point it at no socket
    conf = site.root / "nobody.toml"
    conf.write_text(
        site.agent.config.read_text().replace(str(site.agent.socket), str(site.root / "none.sock"))
    )
    conf.chmod(0o644)
    stub = write_stub(site.root / "bin" / "sendmail", SYSTEM_PYTHON, [str(REPO)])
    rcpt = f"{site.unique('nb')}@example.net"
    res = subprocess.run(
        [*AS_NOBODY, str(stub), "-i", rcpt],
        input=b"From: app@example.com\nSubject: from nobody\n\nhi\n",
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(conf)},
        cwd="/",
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    site.agent.poke()  # its own poke went to none.sock's trigger
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))
    [m] = [m for m in site.relay.messages if rcpt in m.rcpt_tos]
    assert b"from userid 65534" in received_uid(m.data)
    assert_logged(site, "uid=65534 (maildrop)")


def test_claimed_uid_in_file_is_ignored(site: Site) -> None:
    """A file that says `uid 0` is still named after its real owner."""
    name = site.unique("claim")
    rcpt = f"{name}@example.net"
    data = queue_file_bytes([rcpt], good_body("claims root"), uid=0)
    code = (
        "import os,sys; d=sys.argv[1]; n=sys.argv[2]; t=os.path.join(d,'.t'+n);"
        "fd=os.open(t,os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o644); os.write(fd,sys.stdin.buffer.read());"
        "os.close(fd); os.rename(t,os.path.join(d,n))"
    )
    res = subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", code, str(site.maildrop), name],
        input=data,
        capture_output=True,
        cwd="/",
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    site.agent.poke()
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))
    [m] = [m for m in site.relay.messages if rcpt in m.rcpt_tos]
    line = received_uid(m.data)
    assert b"from userid 65534" in line and b"userid 0" not in line


def test_other_user_over_the_socket_is_named_by_peer_credentials(site: Site) -> None:
    rcpt = f"{site.unique('sock')}@example.net"
    code = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rwb');"
        "r=lambda: f.readline();\n"
        "def c(x):\n f.write(x+b'\\r\\n'); f.flush(); l=r()\n while l[3:4]==b'-': l=r()\n return l\n"
        "r(); c(b'EHLO me'); c(b'MAIL FROM:<app@example.com>'); c(b'RCPT TO:<'+sys.argv[2].encode()+b'>');"
        "c(b'DATA'); print(c(b'From: app@example.com\\r\\nSubject: s\\r\\n\\r\\nhi\\r\\n.').decode())"
    )
    res = subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", code, str(site.agent.socket), rcpt],
        capture_output=True,
        cwd="/",
        timeout=30,
    )
    assert res.returncode == 0 and res.stdout.startswith(b"250"), (res.stdout, res.stderr)
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))
    [m] = [m for m in site.relay.messages if rcpt in m.rcpt_tos]
    assert b"from userid 65534" in received_uid(m.data)


# --- CR, LF and NUL in addresses ---------------------------------------------------------


class Raw:
    """A byte-exact SMTP client: smtplib would refuse to send what we want to test."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                assert chunk, "connection closed"
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            if line[3:4] != b"-":
                return line

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()


@pytest.mark.parametrize("bad", [b"\r", b"\0"], ids=["cr", "nul"])
def test_smtp_refuses_cr_and_nul_in_addresses(site: Site, bad: bytes) -> None:
    with Raw(str(site.agent.socket)) as c:
        assert c.cmd(b"EHLO me").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<app@example.com" + bad + b"RCPT TO:<evil@example.org>>")[:1] == b"5"
        assert c.cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<x@example.net" + bad + b"RCPT TO:<evil@example.org>>")[:1] == b"5"
        assert c.cmd(b"RCPT TO:<x@example.net>" + bad + b"RCPT TO:<evil@example.org>")[:1] == b"5"
        assert c.cmd(b"DATA")[:1] == b"5"  # no recipient was ever accepted
        c.cmd(b"QUIT")
    assert_healthy(site)
    assert not any("evil@example.org" in "".join(m.rcpt_tos) for m in site.relay.messages)


def test_smtp_refuses_a_bare_cr_even_where_the_parser_would_drop_it(site: Site) -> None:
    with Raw(str(site.agent.socket)) as c:
        assert c.cmd(b"EHLO me").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<app@exa\rmple.com>")[:1] == b"5"
        c.cmd(b"RSET")
        assert c.cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<evil@example.org\r>")[:1] == b"5"
        c.cmd(b"QUIT")


@pytest.mark.parametrize("bad", [b"\r", b"\0"], ids=["cr", "nul"])
def test_smtp_never_queues_cr_or_nul_in_an_address(site: Site, bad: bytes) -> None:
    """Whatever the parser makes of it, no address with CR or NUL reaches the queue or the relay."""
    rcpt = f"{site.unique('cln')}@example.net"
    with Raw(str(site.agent.socket)) as c:
        assert c.cmd(b"EHLO me").startswith(b"250")
        c.cmd(b"MAIL FROM:<app@example.com>")
        c.cmd(b"RCPT TO:<" + rcpt.encode() + bad + b">")
        if c.cmd(b"DATA").startswith(b"354"):
            c.cmd(b"From: app@example.com\r\nSubject: s\r\n\r\nhi\r\n.")
        c.cmd(b"QUIT")
    assert_healthy(site)
    for m in site.relay.messages:
        assert not any(ch in "".join(m.rcpt_tos) + m.mail_from for ch in "\r\n\0")


def test_smtp_bare_lf_ends_the_command_so_no_address_holds_one(site: Site) -> None:
    """LF cannot sit inside an address: it ends the line, and what follows is a command of its own."""
    rcpt = f"{site.unique('blf')}@example.net"
    with Raw(str(site.agent.socket)) as c:
        assert c.cmd(b"EHLO me").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
        c.sock.sendall(b"RCPT TO:<" + rcpt.encode() + b"\n>\r\n")
        c.reply()  # "RCPT TO:<...": aiosmtpd's lenient parser may take the unterminated address
        assert c.reply()[:1] == b"5"  # ">": not a command
        if c.cmd(b"DATA").startswith(b"354"):
            assert c.cmd(b"From: app@example.com\r\nSubject: s\r\n\r\nhi\r\n.").startswith(b"250")
            wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))
        c.cmd(b"QUIT")
    for m in site.relay.messages:
        assert not any(ch in "".join(m.rcpt_tos) for ch in "\r\n\0>")


ARGV_INJECTIONS = [
    ["-i", "x@example.net\rRCPT TO:<evil@example.org>"],
    ["-i", "x@example.net\nRCPT TO:<evil@example.org>"],
    ["-i", "-f", "app@example.com\r\nRCPT TO:<evil@example.org>", "x@example.net"],
    ["-i", "-f", "app@example.com\nX: y", "x@example.net"],
]
ARGV_IDS = ["cr-rcpt", "lf-rcpt", "crlf-sender", "lf-sender"]


@pytest.mark.parametrize("args", ARGV_INJECTIONS, ids=ARGV_IDS)
def test_sendmail_argv_injection_is_refused(site: Site, args: list[str]) -> None:
    res = site.agent.sendmail(args, b"From: app@example.com\nSubject: argv\n\nhi\n")
    assert res.returncode in (64, 65), (res.returncode, res.stderr)
    assert res.stderr.count(b"\n") == 1 and b"CR, LF or NUL" in res.stderr, res.stderr
    assert_healthy(site)
    assert not any("evil@example.org" in m.rcpt_tos for m in site.relay.messages)


@pytest.mark.parametrize("args", ARGV_INJECTIONS, ids=ARGV_IDS)
def test_sendmail_argv_injection_exits_65(site: Site, args: list[str]) -> None:
    res = site.agent.sendmail(args, b"From: app@example.com\nSubject: s\n\nhi\n")
    assert res.returncode == 65, (res.returncode, res.stderr)


def test_sendmail_nul_in_header_address_exits_65(site: Site) -> None:
    res = site.agent.sendmail(
        ["-t", "-i"], b"From: app@example.com\nTo: x@example.net\0evil@example.org\n\nhi\n"
    )
    assert res.returncode == 65 and res.stderr.count(b"\n") == 1, res.stderr


def test_smtp_smuggling_body_stays_one_message(site: Site) -> None:
    """A lone `.` hidden behind bare LF/CR must not end the message at the relay."""
    rcpt = f"{site.unique('smug')}@example.net"
    body = (
        b"From: app@example.com\nSubject: smuggle\n\nline\n.\nMAIL FROM:<evil@example.org>\n"
        b"RCPT TO:<victim@example.org>\nDATA\nsmuggled\r.\r\nend\n.\r\nlast\n"
    )
    res = site.agent.sendmail(["-i", rcpt], body)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: any(rcpt in m.rcpt_tos for m in site.relay.messages))
    [m] = [m for m in site.relay.messages if rcpt in m.rcpt_tos]
    assert m.data.endswith(b"last\r\n") and b"smuggled" in m.data
    time.sleep(0.5)
    assert not any("victim@example.org" in m.rcpt_tos for m in site.relay.messages)
    assert not any(m.mail_from == "evil@example.org" for m in site.relay.messages)
