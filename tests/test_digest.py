from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent import config
from agent.submit import config_cache

TOML = """
[queue]
path = "/var/q"
maildrop = "/var/md"
min_free = 5
[listen]
socket = "/run/x.sock"
[limits]
max_message_size = 1000
[sender]
default_from = "noreply@example.com"
rewrite_local = false
[aliases]
Root = "ops@example.com"
[[dkim]]
domain = "example.com"
selector = "a"
key_file = "/k1"
[[dkim]]
domain = "example.com"
selector = "b"
key_file = "/k2"
[policy]
unsigned = "send"
"""


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(TOML)
    return p


def test_build_holds_exactly_what_sendmail_needs(cfg_path: Path) -> None:
    cfg = config.load(str(cfg_path))
    d = config_cache.build(cfg)
    st = cfg_path.stat()
    assert d == {
        "version": 1,
        "maildrop": "/var/md",
        "min_free": 5,
        "max_message_size": 1000,
        "socket": "/run/x.sock",
        "default_from": "noreply@example.com",
        "rewrite_local": False,
        "aliases": {"root": "ops@example.com"},
        "dkim_domains": ["example.com"],
        "unsigned": "send",
        "hostname": cfg.hostname,
        "st_ino": st.st_ino,
        "st_mtime_ns": st.st_mtime_ns,
        "st_size": st.st_size,
    }


def test_write_then_load_roundtrip(cfg_path: Path) -> None:
    cfg = config.load(str(cfg_path))
    assert config_cache.write(cfg)
    dpath = cfg_path.parent / ".config.toml.digest"
    assert dpath.stat().st_mode & 0o777 == 0o644
    assert config_cache.load(str(cfg_path)) == config_cache.build(cfg)
    assert [p.name for p in cfg_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_after_edit_or_replace(cfg_path: Path) -> None:
    assert config_cache.write(config.load(str(cfg_path)))
    st = cfg_path.stat()
    os.utime(cfg_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert config_cache.load(str(cfg_path)) is None
    assert config_cache.write(config.load(str(cfg_path)))
    assert config_cache.load(str(cfg_path)) is not None
    # same size and mtime, new inode (editors that write a new file and rename it)
    new = cfg_path.parent / "new.toml"
    new.write_text(TOML)
    os.utime(new, ns=(st.st_atime_ns, cfg_path.stat().st_mtime_ns))
    new.replace(cfg_path)
    assert config_cache.load(str(cfg_path)) is None


def test_untrusted_digests_are_ignored(cfg_path: Path) -> None:
    assert config_cache.write(config.load(str(cfg_path)))
    dpath = cfg_path.parent / ".config.toml.digest"
    dpath.chmod(0o664)
    assert config_cache.load(str(cfg_path)) is None
    dpath.chmod(0o644)
    os.chown(dpath, 65534, 65534)  # neither root nor the config's owner
    assert config_cache.load(str(cfg_path)) is None
    os.chown(dpath, 0, 0)
    assert config_cache.load(str(cfg_path)) is not None
    dpath.write_bytes(b"\x00garbage")
    assert config_cache.load(str(cfg_path)) is None


def test_missing_config_or_digest(tmp_path: Path, cfg_path: Path) -> None:
    assert config_cache.load(str(tmp_path / "nope.toml")) is None
    assert config_cache.load(str(cfg_path)) is None
    assert config_cache.write(config.from_dict({})) is False  # no config file: nothing to tie a digest to


def test_write_to_unwritable_dir_returns_false() -> None:
    # pytest's tmp dirs are root-only; the venv's python lives under /root: use the system one
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        cfg_path = Path(tmp) / "config.toml"
        cfg_path.write_text(TOML)
        code = (
            "import sys; from agent import config; from agent.submit import config_cache;"
            f"sys.exit(0 if config_cache.write(config.load({str(cfg_path)!r})) is False else 1)"
        )
        run = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "/usr/bin/python3",
                "-S",
                "-c",
                code,
            ],
            cwd="/",
            env={"PYTHONPATH": str(Path(__file__).parents[1])},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        assert os.listdir(tmp) == ["config.toml"]
