"""The package installed with apt into a throwaway Debian 12 root (mmdebstrap + chroot, never this
machine's own /) where Postfix was installed first: apt replaces Postfix, `man relay-agent` renders,
`sendmail -t -i` reaches a relay stand-in running inside that root DKIM-signed, a reinstall keeps the
queue and the config, and `apt-get purge` removes it cleanly after saying how much mail it held.

About a minute (a Debian root fetched from the package registry, then Python and the package in
it), so it runs in CI with the rest; it needs root and mmdebstrap, which `./dev test` installs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.demo.tour import dkim_verdicts
from agent.dkim import key_files
from agent.submit import stub
from tests.test_deb import built_deb

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mmdebstrap") is None, reason="root and mmdebstrap"),
    pytest.mark.timeout(1200),
]

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
SITE = "usr/lib/relay-agent/lib/python3.11/site-packages"
RELAY_USER, RELAY_PASSWORD = "relay@example.com", "deb-test-password"
RELAY_SCRIPT = f"""\
import json, os, sys
from agent.demo.smarthost import DemoRelay
d = sys.argv[1]
relay = DemoRelay(d, {RELAY_USER!r}, {RELAY_PASSWORD!r})
relay.start()
with open(d + "/port.tmp", "w") as f:
    f.write(str(relay.port))
os.rename(d + "/port.tmp", d + "/port")
msg = relay.wait_for(1, timeout=300)[0]
with open(d + "/received.tmp", "wb") as f:
    f.write(msg.data)
with open(d + "/envelope.json", "w") as f:
    json.dump({{"from": msg.mail_from, "to": msg.rcpt_tos, "tls": msg.tls, "auth": msg.auth_user}}, f)
os.rename(d + "/received.tmp", d + "/received")
relay.stop()
"""


def chroot(root: Path, *cmd: str, stdin: bytes | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        ["chroot", str(root), *cmd], input=stdin, capture_output=True, env=ENV, timeout=timeout, check=False
    )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def debroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Debian 12 with systemd (not running: a chroot) and Postfix, /proc mounted; removed (and
    unmounted) at the end."""
    deb = built_deb()
    root = tmp_path_factory.mktemp("debroot") / "root"
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=apt", "--include=systemd,postfix,man-db",
         "--skip=cleanup/apt/lists", "bookworm", str(root)],
        check=True, timeout=900, env={**os.environ, **ENV},
    )  # fmt: skip
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        shutil.copy(deb, root / "tmp" / deb.name)
        yield root
    finally:
        # never remove a tree that still has the host's /proc mounted in it
        if subprocess.run(["umount", "-l", str(root / "proc")], check=False).returncode == 0:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(debroot: Path) -> tuple[Path, str, list[str]]:
    """The root after `apt-get install ./relay-agent_*.deb`, apt's output and systemctl's calls."""
    assert "postfix" in chroot(debroot, "dpkg-query", "-S", "/usr/sbin/sendmail")
    with systemctl_log(debroot) as calls:
        out = chroot(debroot, "apt-get", "install", "-y", f"/tmp/{built_deb().name}")
    return debroot, out, unit_actions(calls())


def unit_actions(calls: list[str]) -> list[str]:
    """What systemctl was asked to do to relay-agent.service (start, stop, ...), in order."""
    actions = [line.split()[-2] for line in calls if line.endswith(" relay-agent.service")]
    return [a for a in actions if a in ("start", "stop", "restart", "reload", "try-restart")]


def test_apt_replaces_postfix(installed: tuple[Path, str, list[str]]) -> None:
    root, out, actions = installed
    assert actions == []  # no account in the config yet: enabled, not started
    assert "postfix" in out.split("The following packages will be REMOVED:")[1].split("\n")[1]
    status = chroot(root, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "postfix")
    assert not status.startswith("ii"), status
    assert chroot(root, "dpkg-query", "-S", "/usr/sbin/sendmail").startswith("relay-agent: ")
    assert "relay-agent: not started: set relay.username in /etc/relay-agent/config.toml" in out
    # enabled though not started; the user and directories come from systemd-sysusers/-tmpfiles
    assert (root / "etc/systemd/system/multi-user.target.wants/relay-agent.service").is_symlink()
    st = (root / "var/spool/relay-agent-maildrop").stat()
    uid = int(chroot(root, "id", "-u", "relay-agent"))
    assert (st.st_mode & 0o7777, st.st_uid) == (0o1733, uid)
    assert ((root / "var/spool/relay-agent").stat().st_mode & 0o7777) == 0o700
    bundle = root / SITE / "agent/__pycache__/sendmail.cpython-311.bundle"
    assert (bundle.stat().st_uid, bundle.stat().st_mode & 0o777) == (0, 0o644)  # built by postinst
    for name in ("newaliases", "/usr/bin/newaliases"):  # Debian's path and Postfix's
        assert chroot(root, name) == stub.NEWALIASES_LINE + "\n"
    assert chroot(root, "mailq") == "Mail queue is empty\n"


def test_man_pages_render(installed: tuple[Path, str, list[str]]) -> None:
    root = installed[0]
    page = subprocess.run(
        ["chroot", str(root), "man", "relay-agent"],
        capture_output=True, text=True, env={**ENV, "MANPAGER": "cat", "MANWIDTH": "80"}, check=True,
    ).stdout  # fmt: skip
    assert "relay-agent" in page and "SYNOPSIS" in page
    assert chroot(root, "man", "-w", "sendmail").strip() == "/usr/share/man/man8/sendmail.8.gz"


def test_sendmail_reaches_a_relay_in_the_root_dkim_signed(installed: tuple[Path, str, list[str]]) -> None:
    root = installed[0]
    record = configure(root)
    (root / "tmp/relay").mkdir(mode=0o755)
    (root / "tmp/relay.py").write_text(RELAY_SCRIPT)
    relay = subprocess.Popen(
        ["chroot", str(root), "/usr/lib/relay-agent/bin/python", "-I", "/tmp/relay.py", "/tmp/relay"], env=ENV
    )
    daemon = None
    log = root / "tmp/daemon.log"
    try:
        port = wait_for_file(root / "tmp/relay/port", relay).read_text()
        text = (root / "etc/relay-agent/config.toml").read_text()
        (root / "etc/relay-agent/config.toml").write_text(text.replace("port = 0", f"port = {port}"))
        ids = (
            chroot(root, "id", "-u", "relay-agent").strip()
            + ":"
            + chroot(root, "id", "-g", "relay-agent").strip()
        )
        with log.open("wb") as stderr:
            daemon = subprocess.Popen(
                ["chroot", f"--userspec={ids}", str(root), "/usr/bin/relay-agent", "run"],
                env={**ENV, "RELAY_AGENT_PASSWORD": RELAY_PASSWORD},
                stderr=stderr,
            )
        message = b"From: app@example.com\nTo: root\nSubject: from the package\n\nhello from apt\n"
        chroot(root, "/usr/sbin/sendmail", "-t", "-i", stdin=message)
        data = wait_for_file(root / "tmp/relay/received", relay, log).read_bytes()
    finally:
        codes = []
        for proc in (daemon, relay):
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                codes.append(proc.wait(timeout=30))
    assert codes[0] == 0  # the daemon: SIGTERM drains and exits 0
    assert b"hello from apt" in data
    envelope = (root / "tmp/relay/envelope.json").read_text()
    assert '"to": ["ops@example.net"]' in envelope and '"tls": true' in envelope and RELAY_USER in envelope
    verdicts = dkim_verdicts(data, {key_files.record_name("example.com", "deb"): record})
    assert verdicts and all(ok for ok, _ in verdicts), verdicts


def configure(root: Path) -> str:
    """A config naming the stand-in (port filled in later) and a DKIM key; the key's TXT value."""
    chroot(root, "relay-agent", "dkim", "keygen", "--domain", "example.com", "--selector", "deb",
           "--out", "/etc/relay-agent/dkim")  # fmt: skip
    key_file = "/etc/relay-agent/dkim/example.com.deb.pem"
    chroot(root, "chown", "relay-agent:relay-agent", key_file)  # the daemon wants it 0600, its own
    (root / "etc/relay-agent/config.toml").write_text(
        f'[relay]\nhost = "127.0.0.1"\nport = 0\nusername = "{RELAY_USER}"\n'
        'ca_file = "/tmp/relay/demo-ca.pem"\ntimeout = 10\n'
        "[queue]\nmin_free = 0\nretry_initial = 1\n"
        '[sender]\ndefault_from = "noreply@example.com"\n[aliases]\nroot = "ops@example.net"\n'
        f'[[dkim]]\ndomain = "example.com"\nselector = "deb"\nkey_file = "{key_file}"\n'
        '[dns]\nnameserver = "127.0.0.1:9"\n'  # nothing listens: the start-up check asks no one outside
    )
    key = serialization.load_pem_private_key((root / key_file.lstrip("/")).read_bytes(), None)
    return key_files.txt_value(key)  # type: ignore[arg-type]


def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path | None = None, timeout: float = 60
) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}"
        logged = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        assert time.monotonic() < deadline, f"no {path} after {timeout} s; the daemon said:\n{logged}"
        time.sleep(0.1)
    return path


def test_reinstall_keeps_queue_and_config(installed: tuple[Path, str, list[str]]) -> None:
    root = installed[0]
    config = (root / "etc/relay-agent/config.toml").read_text()
    message = b"From: app@example.com\nTo: root\nSubject: waits for the daemon\n\nqueued\n"
    chroot(root, "/usr/sbin/sendmail", "-t", "-i", stdin=message)  # daemon down: into the maildrop
    dropped = sorted(p.name for p in (root / "var/spool/relay-agent-maildrop").iterdir())
    assert dropped
    with systemctl_log(root) as calls:  # systemd "running": the maintainer scripts act on the unit
        out = chroot(root, "apt-get", "install", "-y", "--reinstall", f"/tmp/{built_deb().name}")
    assert "not started" not in out  # the config names an account now
    assert unit_actions(calls()) == ["stop", "start"]  # prerm drains it, postinst starts it: once
    assert (root / "etc/relay-agent/config.toml").read_text() == config
    assert sorted(p.name for p in (root / "var/spool/relay-agent-maildrop").iterdir()) == dropped
    assert (root / SITE / "agent/__pycache__/sendmail.cpython-311.bundle").is_file()


@contextlib.contextmanager
def systemctl_log(root: Path) -> Iterator[Callable[[], list[str]]]:
    """A chroot cannot run systemd: make it look booted (/run/systemd/system) and put a systemctl
    first on PATH that logs its arguments, answers "enabled" and "inactive", passes what only
    makes links (preset, enable, mask) to the real one and does nothing else.
    /usr/sbin: apt runs dpkg with PATH=/usr/sbin:/usr/bin:/sbin:/bin (DPkg::Path)."""
    shim, log = root / "usr/sbin/systemctl", root / "tmp/systemctl.log"
    assert not shim.exists()
    shim.write_text(
        '#!/bin/sh\necho "$*" >> /tmp/systemctl.log\ncase "$*" in\n'
        "  *is-enabled*) echo enabled ;;\n  *is-active*) exit 3 ;;\n"
        '  *preset*|*enable*|*mask*) exec /bin/systemctl "$@" ;;\n'  # work offline: links only
        "esac\n"
    )
    shim.chmod(0o755)
    (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    try:
        yield lambda: log.read_text().splitlines() if log.exists() else []
    finally:
        (root / "run/systemd/system").rmdir()
        shim.unlink()


def test_purge_says_what_it_removes_and_leaves_nothing(installed: tuple[Path, str, list[str]]) -> None:
    root = installed[0]
    held = sum(1 for p in (root / "var/spool/relay-agent-maildrop").iterdir() if p.is_file())
    out = chroot(root, "apt-get", "purge", "-y", "relay-agent")
    assert f"relay-agent: purge removes 0 queued message(s) in /var/spool/relay-agent and {held} in" in out
    status = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "relay-agent"], capture_output=True, env=ENV, check=False
    )
    assert status.returncode != 0  # not even config-files left
    for gone in ("usr/lib/relay-agent", "etc/relay-agent", "var/spool/relay-agent",
                 "var/spool/relay-agent-maildrop", "usr/sbin/sendmail", "usr/bin/mailq",
                 "lib/systemd/system/relay-agent.service",
                 "etc/systemd/system/multi-user.target.wants/relay-agent.service"):  # fmt: skip
        assert not os.path.lexists(root / gone), gone
