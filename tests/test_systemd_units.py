"""The systemd unit and snippets, checked by systemd's own tools (systemd 252 on Debian 12)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent import config
from agent.install import plans

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "relay-agent.service"
SYSUSERS = ROOT / "systemd" / "relay-agent.sysusers"
TMPFILES = ROOT / "systemd" / "relay-agent.tmpfiles"
VENV_BIN = str(ROOT / ".venv" / "bin")
MAX_EXPOSURE = 2.0


def unit_settings(text: str) -> dict[str, list[str]]:
    """Section.Key -> values in order (unit files repeat keys; configparser cannot)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The unit as install writes it: ExecStart at an existing relay-agent."""
    path = tmp_path / "relay-agent.service"
    path.write_text(plans.render_unit(UNIT.read_text(), VENV_BIN))
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def test_verify_accepts_the_rendered_unit_without_warnings(rendered: Path) -> None:
    proc = analyze("verify", str(rendered))
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and bad values are only warnings to verify: any output is a defect.
    assert proc.stderr.strip() == "" and proc.stdout.strip() == ""


def test_verify_would_catch_a_missing_binary_and_a_bad_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.service"
    missing.write_text(plans.render_unit(UNIT.read_text(), str(tmp_path / "nowhere")))
    assert analyze("verify", str(missing)).returncode != 0
    typo = tmp_path / "typo.service"
    typo.write_text(plans.render_unit(UNIT.read_text(), VENV_BIN).replace("ProtectHome=", "ProtectHomee="))
    assert "Unknown key" in analyze("verify", str(typo)).stderr


def exposure(path: Path) -> float:
    proc = analyze("security", "--offline=yes", str(path))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert "Invalid syntax" not in proc.stderr and "Unknown key" not in proc.stderr, proc.stderr
    return float(match.group(1))


def test_security_exposure_is_at_most_two(rendered: Path) -> None:
    level = exposure(rendered)
    assert level <= MAX_EXPOSURE
    # Sanity of the measurement itself: dropping the sandbox must raise the number a lot.
    bare = rendered.with_name("bare.service")
    bare.write_text("[Service]\nType=notify\nExecStart=/bin/true\n")
    assert exposure(bare) > level + 5


def test_unit_contract() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Service.Type"] == ["notify"]
    assert s["Service.ExecStart"] == [f"{plans.UNIT_EXEC} run"]
    check = f"+{plans.UNIT_EXEC} config check --quiet"
    assert s["Service.ExecReload"] == [check, "/bin/kill -HUP $MAINPID"]
    assert check in s["Service.ExecStartPre"]
    assert s["Service.User"] == [plans.USER] and "Service.DynamicUser" not in s
    assert s["Service.WatchdogSec"] and s["Service.UMask"] == ["0077"]
    assert s["Service.CapabilityBoundingSet"] == [""] and s["Service.NoNewPrivileges"] == ["yes"]
    assert s["Service.RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # The relay is remote: outbound IP must stay open.
    assert "Service.IPAddressDeny" not in s and "Service.PrivateNetwork" not in s
    # Maildrop owners are checked by uid: no user namespace.
    assert s.get("Service.PrivateUsers", ["no"]) == ["no"]
    # A missing password file must not fail the unit: LoadCredential= paired with a
    # SetCredential= fallback of the same ID (systemd.exec(5), 252).
    assert s["Service.LoadCredential"] == ["relay-password:/etc/relay-agent/relay-password"]
    assert [v.partition(":")[0] for v in s["Service.SetCredential"]] == ["relay-password"]


def test_unit_paths_match_config_defaults() -> None:
    s = unit_settings(UNIT.read_text())
    q, listen = config.QueueConfig(), config.ListenConfig()
    assert s["Service.ReadWritePaths"] == [f"{q.path} {q.maildrop}"]
    assert f"/run/{s['Service.RuntimeDirectory'][0]}" == os.path.dirname(listen.socket)
    assert s["Service.RuntimeDirectoryMode"] == ["0755"]
    lines = [line.split() for line in TMPFILES.read_text().splitlines() if line and not line.startswith("#")]
    dirs = {fields[1]: (fields[2], fields[3]) for fields in lines}
    assert dirs == {
        q.path: ("0700", plans.USER),
        q.maildrop: ("1733", plans.USER),
        os.path.dirname(listen.socket): ("0755", plans.USER),
    }
    assert (q.path, q.maildrop) == (plans.QUEUE, plans.MAILDROP)


def test_sysusers_creates_the_user_in_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    entry = [
        line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("relay-agent:")
    ]
    assert len(entry) == 1
    _name, _, uid, gid, _, home, shell = entry[0].split(":")
    assert int(uid) < 1000 and home == plans.HOME and shell.endswith("nologin")
    assert f"relay-agent:x:{gid}:" in (tmp_path / "etc/group").read_text()


def test_tmpfiles_creates_queue_maildrop_and_run_dir(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True)
    uid = plans.lookup_ids(str(tmp_path))
    assert uid is not None
    proc = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for path, mode in ((plans.QUEUE, 0o700), (plans.MAILDROP, 0o1733), ("/run/relay-agent", 0o755)):
        st = os.stat(tmp_path / path.lstrip("/"))
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, *uid), path


def test_example_config_is_valid_and_covers_every_key() -> None:
    data = tomllib.loads((ROOT / "examples" / "config.toml").read_text())
    cfg = config.from_dict(data)
    sections = {
        "relay": config.RelayConfig,
        "queue": config.QueueConfig,
        "listen": config.ListenConfig,
        "limits": config.LimitsConfig,
        "sender": config.SenderConfig,
        "metrics": config.MetricsConfig,
        "policy": config.PolicyConfig,
        "dns": config.DnsConfig,
    }
    for name, cls in sections.items():
        assert set(data[name]) == {f.name for f in dataclasses.fields(cls)}, name
    # Defaults shown are the real defaults (the example's own values aside).
    assert cfg.queue == config.QueueConfig() and cfg.listen == config.ListenConfig()
    assert cfg.relay.host == "smtp.elastx.email" and cfg.relay.tls == "starttls"
    # Two selectors for one domain: the rotation the comments describe.
    assert [(k.domain, k.selector) for k in cfg.dkim] == [
        ("example.com", "relay2025"),
        ("example.com", "relay2026"),
    ]
    assert "default" in cfg.aliases and cfg.policy.unsigned == "reject"


MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE / PR_MDWE_REFUSE_EXEC_GAIN: the kernel's MemoryDenyWriteExecute.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(99)
import asyncio, ssl
import dkim, aiosmtplib, aiosmtpd.smtp, aiolimiter, dns.resolver, keyring
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                        serialization.NoEncryption())
msg = b"From: a@example.com\\r\\nTo: b@example.net\\r\\nSubject: x\\r\\n\\r\\nbody\\r\\n"
sig = dkim.sign(msg, b"sel", b"example.com", pem, include_headers=[b"from", b"to", b"subject"])
ssl.create_default_context()
asyncio.run(asyncio.sleep(0))
# A W+X mapping must now be refused, or the probe proves nothing.
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    print("ok", sig[:15].decode().rstrip(":"))
"""


def test_python_stack_runs_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes must not break the daemon's imports, TLS or signing."""
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120
    )
    if proc.returncode == 99:
        pytest.skip("kernel without PR_SET_MDWE (< 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok DKIM-Signature"
