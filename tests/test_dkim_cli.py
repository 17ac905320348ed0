"""`dkim keygen` / `dkim record`, run as a real subprocess, checked against the written key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dkim

from agent.dkim import key_files
from tests.support.verify import verify_dkimpy

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RELAY_AGENT_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", "from agent.cli.dkim import app; app()", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def record_strings(output: str) -> tuple[str, list[str]]:
    lines = [line for line in output.splitlines() if " IN TXT " in line]
    assert len(lines) == 1, output
    m = re.fullmatch(r'(\S+)\. IN TXT \( ((?:"[^"]*" ?)+) \)', lines[0])
    assert m, lines[0]
    return m.group(1), re.findall(r'"([^"]*)"', m.group(2))


def test_keygen_rsa_writes_0600_key_and_matching_record(tmp_path: Path) -> None:
    proc = run("keygen", "--domain", "example.com", "--selector", "relay2026", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    key_path = tmp_path / "example.com.relay2026.pem"
    assert str(key_path) in proc.stdout
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    name, strings = record_strings(proc.stdout)
    assert name == "relay2026._domainkey.example.com"
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    key = key_files.load_private_key(str(key_path))
    assert "".join(strings) == key_files.txt_value(key)
    assert key_files.key_type(key) == "rsa" and key.key_size == 2048  # type: ignore[union-attr]
    assert 'key_file = "' in proc.stdout and "[[dkim]]" in proc.stdout
    # the printed record really verifies a signature made with the written key
    msg = b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    signed = dkim.sign(msg, b"relay2026", b"example.com", key_path.read_bytes()) + msg
    assert verify_dkimpy(signed, {name: "".join(strings)})


def test_keygen_ed25519_default_dir_and_refuses_overwrite(tmp_path: Path) -> None:
    args = ("keygen", "--domain", "example.org", "--selector", "ed", "--algorithm", "ed25519")
    first = run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key_path = tmp_path / "example.org.ed.pem"
    _, strings = record_strings(first.stdout)
    assert "".join(strings) == key_files.txt_value(key_files.load_private_key(str(key_path)))
    before = key_path.read_bytes()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 78
    assert again.stderr.startswith("relay-agent: ") and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert key_path.read_bytes() == before


def test_keygen_rejects_unsafe_names(tmp_path: Path) -> None:
    proc = run("keygen", "--domain", "../etc", "--selector", "s", "--out", str(tmp_path))
    assert proc.returncode == 64
    assert "--domain" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert (
        run("keygen", "--domain", "example.com", "--selector", "a/b", "--out", str(tmp_path)).returncode == 64
    )
    assert run("keygen", "--domain", "example.com", "--selector", "s", "--algorithm", "dsa").returncode == 64


def test_record_for_configured_key_and_exit_78_otherwise(tmp_path: Path) -> None:
    gen = run("keygen", "--domain", "example.com", "--selector", "s1", "--out", str(tmp_path))
    assert gen.returncode == 0, gen.stderr
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[dkim]]\ndomain = "example.com"\nselector = "s1"\nkey_file = "{tmp_path / "example.com.s1.pem"}"\n'
    )
    shown = run("record", "--domain", "example.com", "--selector", "s1", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert record_strings(shown.stdout) == record_strings(gen.stdout)
    missing = run("record", "--domain", "example.com", "--selector", "nope", "--config", str(config))
    assert missing.returncode == 78
    assert missing.stderr == f"relay-agent: no [[dkim]] key for nope._domainkey.example.com in {config}\n"
    no_file = run(
        "record", "--domain", "example.com", "--selector", "s1", "--config", str(tmp_path / "x.toml")
    )
    assert no_file.returncode == 78
