"""`relay-agent install` / `uninstall` into temporary roots, run as real subprocesses."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent
from agent.install import plans
from agent.submit import bytecode_bundle, config_cache
from tests.support.agent_env import traversable_tmp

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
VENV_BIN = str(ROOT / ".venv" / "bin")
FAKE_SENDMAIL = b"#!/bin/sh\n# the previous MTA's sendmail\nexit 0\n" + os.urandom(64)
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def cli(
    *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, PYTHON, "-c", "from agent.cli.install import app; app()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/", env=env)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir other users can traverse (pytest's own are 0700): for the nobody test."""
    with traversable_tmp("relay-agent-install-") as path:
        yield path


@pytest.fixture
def target(open_tmp: Path) -> Path:
    """A minimal Debian-like root with another MTA's /usr/sbin/sendmail."""
    root = open_tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "usr/sbin").mkdir(parents=True)
    sendmail = root / "usr/sbin/sendmail"
    sendmail.write_bytes(FAKE_SENDMAIL)
    sendmail.chmod(0o2755)
    return root


def with_dpkg(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/diversions").touch()
    return root


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path with mode, owner, group and content digest (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                config_cache = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                config_cache = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                config_cache = ""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, config_cache)
    return out


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def test_dry_run_prints_every_step_and_changes_nothing(target: Path) -> None:
    before = tree(target)
    proc = cli("install", "--root", str(target), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == before
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("would: ") for line in lines)
    text = proc.stdout
    assert f"useradd --prefix {target} --system" in text
    assert f"move {target}/usr/sbin/sendmail to {target}/usr/sbin/sendmail.relay-agent-orig" in text
    assert f"directory {target}/var/spool/relay-agent-maildrop mode 1733 owner relay-agent" in text
    assert f"ExecStart={VENV_BIN}/relay-agent run" in text


def test_uninstall_dry_run_changes_nothing(target: Path) -> None:
    assert cli("install", "--root", str(target)).returncode == 0
    before = tree(target)
    proc = cli("uninstall", "--root", str(target), "--dry-run", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == before
    assert f"restore {target}/usr/sbin/sendmail from" in proc.stdout and "purge" in proc.stdout


def test_install_then_uninstall_restores_the_previous_sendmail(target: Path) -> None:
    original = mode_owner(target / "usr/sbin/sendmail")
    proc = cli("install", "--root", str(target))
    assert proc.returncode == 0, proc.stderr
    ids = plans.lookup_ids(str(target))
    assert ids is not None and ids[0] != 0
    uid, gid = ids
    assert mode_owner(target / "etc/relay-agent") == (0o755, 0, 0)
    assert mode_owner(target / "etc/relay-agent/dkim") == (0o750, 0, gid)
    assert mode_owner(target / "var/spool/relay-agent") == (0o700, uid, gid)
    assert mode_owner(target / "var/spool/relay-agent-maildrop") == (0o1733, uid, gid)
    assert (target / "usr/sbin/sendmail.relay-agent-orig").read_bytes() == FAKE_SENDMAIL
    for link, stub in (
        ("usr/sbin/sendmail", "sendmail"),
        ("usr/bin/mailq", "mailq"),
        ("usr/lib/sendmail", "sendmail"),
        ("usr/bin/newaliases", "sendmail"),
    ):
        assert (target / link).resolve() == target / "usr/lib/relay-agent" / stub
    for stub in ("sendmail", "mailq"):
        path = target / "usr/lib/relay-agent" / stub
        interpreter, _, flags = path.read_text().splitlines()[0].partition(" ")
        # Linux hands everything after the interpreter over as ONE argument: "-S -E"
        # would reach python as a single bad option, so the flags must be one word.
        assert interpreter == f"#!{VENV_BIN}/python" and " " not in flags.strip()
        assert flags.startswith("-") and {"S", "E"} <= set(flags)
        assert mode_owner(path)[0] == 0o755
    unit_path = target / "etc/systemd/system/relay-agent.service"
    unit = unit_path.read_text()
    assert f"ExecStart={VENV_BIN}/relay-agent run\n" in unit and plans.UNIT_EXEC not in unit
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    assert (verify.returncode, verify.stderr) == (0, "")
    assert (target / "usr/lib/sysusers.d/relay-agent.conf").read_text().startswith("#")
    assert (target / "usr/lib/tmpfiles.d/relay-agent.conf").is_file()
    assert (target / "etc/relay-agent/config.toml").read_bytes() == (
        ROOT / "examples/config.toml"
    ).read_bytes()
    assert "systemd is not running" in proc.stdout
    # sendmail's fast path finds a fresh digest (unprivileged callers cannot write one).
    assert config_cache.load(str(target / "etc/relay-agent/config.toml")) is not None
    assert mode_owner(target / "etc/relay-agent/.config.toml.digest")[0] == 0o644

    proc = cli("uninstall", "--root", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target / "usr/sbin/sendmail").read_bytes() == FAKE_SENDMAIL
    assert mode_owner(target / "usr/sbin/sendmail") == original
    for gone in (
        "usr/bin/mailq",
        "usr/lib/sendmail",
        "usr/bin/newaliases",
        "usr/lib/relay-agent",
        "usr/sbin/sendmail.relay-agent-orig",
    ):
        assert not os.path.lexists(target / gone), gone
    assert not (target / "etc/systemd/system/relay-agent.service").exists()
    # Mail and config survive a plain uninstall, and it says so.
    assert (target / "var/spool/relay-agent").is_dir() and (target / "etc/relay-agent/config.toml").is_file()
    assert "--purge removes them" in proc.stdout

    proc = cli("uninstall", "--root", str(target), "--purge")
    assert proc.returncode == 0, proc.stderr
    assert not (target / "var/spool/relay-agent").exists() and not (target / "etc/relay-agent").exists()
    assert plans.lookup_ids(str(target)) is None


def test_reinstall_keeps_the_original_aside(target: Path) -> None:
    assert cli("install", "--root", str(target)).returncode == 0
    mine = "# mine\n[relay]\nport = 0\n"
    (target / "etc/relay-agent/config.toml").write_text(mine)
    proc = cli("install", "--root", str(target))
    assert proc.returncode == 0, proc.stderr
    assert "already runs relay-agent's sendmail" in proc.stdout
    assert "  not written, the config needs fixing first: relay.port: 0 is not a TCP port" in proc.stdout
    assert (target / "etc/relay-agent/config.toml").read_text() == mine
    assert cli("uninstall", "--root", str(target)).returncode == 0
    assert (target / "usr/sbin/sendmail").read_bytes() == FAKE_SENDMAIL


def test_dpkg_divert_when_the_root_has_dpkg(target: Path) -> None:
    with_dpkg(target)
    proc = cli("install", "--root", str(target))
    assert proc.returncode == 0, proc.stderr
    assert "dpkg-divert" in proc.stdout
    listing = subprocess.run(
        ["dpkg-divert", f"--root={target}", "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert "local diversion of /usr/sbin/sendmail to /usr/sbin/sendmail.relay-agent-orig" in listing
    assert (target / "usr/sbin/sendmail.relay-agent-orig").read_bytes() == FAKE_SENDMAIL
    assert cli("uninstall", "--root", str(target)).returncode == 0
    assert (target / "usr/sbin/sendmail").read_bytes() == FAKE_SENDMAIL
    listing = subprocess.run(
        ["dpkg-divert", f"--root={target}", "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert "relay-agent" not in listing


def test_root_without_passwd_gets_the_sysusers_snippet_only(tmp_path: Path) -> None:
    proc = cli("install", "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "will come from the sysusers.d snippet" in proc.stdout
    assert not (tmp_path / "etc/passwd").exists()
    assert (tmp_path / "usr/lib/sysusers.d/relay-agent.conf").is_file()
    assert mode_owner(tmp_path / "var/spool/relay-agent-maildrop")[0] == 0o1733


def test_installed_stub_drops_mail_for_an_unprivileged_user(target: Path, open_tmp: Path) -> None:
    bundle = Path(bytecode_bundle.bundle_path(os.path.dirname(agent.__file__)))
    bundle.unlink(missing_ok=True)
    assert cli("install", "--root", str(target)).returncode == 0
    st = bundle.stat()  # the fast path's bundle, written as root: nobody could not
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644)
    conf = open_tmp / "config.toml"
    spool = f"{target}/var/spool"
    conf.write_text(
        f'[queue]\npath = "{spool}/relay-agent"\nmaildrop = "{spool}/relay-agent-maildrop"\n'
        f'min_free = 0\n[listen]\nsocket = "{target}/run/relay-agent/submit.sock"\n'
        '[sender]\ndefault_from = "noreply@example.com"\n[policy]\nunsigned = "send"\n'
    )
    conf.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", "RELAY_AGENT_CONFIG": str(conf)}
    message = (
        b"From: someone@example.com\nTo: ops@example.net\nSubject: installed stub\n\nhello from nobody\n"
    )
    proc = subprocess.run(
        [*AS_NOBODY, str(target / "usr/sbin/sendmail"), "-t", "-i"],
        input=message,
        capture_output=True,
        env=env,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    dropped = list((target / "var/spool/relay-agent-maildrop").iterdir())
    assert len(dropped) == 1
    st = dropped[0].lstat()
    assert st.st_uid == 65534  # the submitting user owns it: the daemon checks that
    assert b"hello from nobody" in dropped[0].read_bytes()


def test_install_on_host_needs_root() -> None:
    proc = cli("install", prefix=tuple(AS_NOBODY), env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 77
    assert proc.stderr.strip() == "relay-agent: install must run as root"
    proc = cli("uninstall", prefix=tuple(AS_NOBODY), env={"PATH": "/usr/bin:/bin"})
    assert (proc.returncode, proc.stderr.strip()) == (77, "relay-agent: uninstall must run as root")


def test_host_dry_run_lists_steps_without_root() -> None:
    # Safe on any machine: nothing is changed, nothing needs privileges.
    proc = cli("install", "--dry-run", prefix=tuple(AS_NOBODY), env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "would: directory /var/spool/relay-agent-maildrop mode 1733 owner relay-agent" in proc.stdout
    assert "/usr/sbin/sendmail" in proc.stdout


def test_missing_root_dir_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli("install", "--root", str(tmp_path / "nope"))
    assert proc.returncode == 64
    assert proc.stderr.strip() == f"relay-agent: --root {tmp_path}/nope: no such directory"


def test_plan_is_pure(target: Path) -> None:
    before = tree(target)
    steps = plans.plan(str(target), VENV_BIN, dpkg=False)
    steps += plans.plan_uninstall(str(target), dpkg=False, purge=True)
    assert tree(target) == before
    assert all(step.description for step in steps)
    out: list[str] = []
    plans.execute(steps, dry_run=True, out=out.append)
    assert tree(target) == before and len(out) == len(steps)


def test_a_wheel_carries_what_install_writes(tmp_path: Path) -> None:
    """`pip install relay-agent` (no checkout) must still be able to `relay-agent install`."""
    import sys
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("relay_agent-*.whl")
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    for rel in ("systemd/relay-agent.service", "systemd/relay-agent.sysusers", "examples/config.toml"):
        code = (
            f"import agent; assert agent.__file__.startswith({str(unpacked)!r}), agent.__file__; "
            f"from agent.install.files import shipped; print(shipped({rel!r}), end='')"
        )
        got = subprocess.run(
            [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {code}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout == (repo / rel).read_text(encoding="utf-8")
