"""agent.dkim.key_files: loading (with the permission check), generating, writing, DNS records."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent.dkim import key_files
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DROP = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture(scope="module")
def rsa_key() -> key_files.PrivateKey:
    return key_files.generate("rsa", 2048)


def test_write_is_0600_and_never_overwrites(tmp_path: Path, rsa_key: key_files.PrivateKey) -> None:
    path = str(tmp_path / "k.pem")
    old = os.umask(0)
    try:
        key_files.write_private_key(rsa_key, path)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o600
    before = Path(path).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        key_files.write_private_key(key_files.generate("ed25519", 0), path)
    assert Path(path).read_bytes() == before
    loaded = key_files.load_private_key(path)
    assert key_files.public_key_b64(loaded) == key_files.public_key_b64(rsa_key)


def test_key_readable_by_others_is_refused(tmp_path: Path, rsa_key: key_files.PrivateKey) -> None:
    path = str(tmp_path / "k.pem")
    key_files.write_private_key(rsa_key, path)
    for mode in (0o644, 0o640, 0o604):
        os.chmod(path, mode)
        with pytest.raises(ConfigError) as err:
            key_files.load_private_key(path)
        assert (
            err.value.message == f"key file {path} is readable by others (mode {mode:04o}); chmod 600 {path}"
        )
        assert "\n" not in err.value.message
    os.chmod(path, 0o400)
    assert key_files.key_type(key_files.load_private_key(path)) == "rsa"


def test_load_errors_are_one_line_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        key_files.load_private_key(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key\n")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        key_files.load_private_key(str(garbage))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(ConfigError, match="not an RSA or Ed25519 key"):
        key_files.load_private_key(str(ec_key))
    with pytest.raises(ConfigError, match="not a regular file"):
        key_files.load_private_key(str(tmp_path))


def test_unreadable_key_for_unprivileged_user(rsa_key: key_files.PrivateKey) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    # pytest's tmp_path sits under a 0700 directory: use one that nobody can traverse
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        private, shared = os.path.join(tmp, "root-only.pem"), os.path.join(tmp, "shared.pem")
        key_files.write_private_key(rsa_key, private)
        key_files.write_private_key(rsa_key, shared)
        os.chmod(shared, 0o644)
        code = (
            "import sys\nfrom agent.dkim import key_files\nfrom agent.errors import ConfigError\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        key_files.load_private_key(path)\n"
            "    except ConfigError as e:\n        print(e.message)\n"
        )
        proc = subprocess.run(
            [*DROP, sys.executable, "-c", code, private, shared],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        )
    assert proc.stdout.splitlines() == [
        f"DKIM key file {private}: cannot open: Permission denied",
        f"key file {shared} is readable by others (mode 0644); chmod 600 {shared}",
    ]


def test_public_key_encodings() -> None:
    ed = key_files.generate("ed25519", 0)
    raw = base64.b64decode(key_files.public_key_b64(ed))
    assert len(raw) == 32  # RFC 8463: the bare key, not SubjectPublicKeyInfo
    assert isinstance(ed, ed25519.Ed25519PrivateKey)
    assert ed25519.Ed25519PublicKey.from_public_bytes(raw) == ed.public_key()
    assert key_files.txt_value(ed) == f"v=DKIM1; k=ed25519; p={key_files.public_key_b64(ed)}"


def test_rsa_record_round_trips(rsa_key: key_files.PrivateKey) -> None:
    value = key_files.txt_value(rsa_key)
    assert value.startswith("v=DKIM1; k=rsa; p=MII")
    der = base64.b64decode(value.split("p=", 1)[1])
    pub = serialization.load_der_public_key(der)
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.public_numbers() == rsa_key.public_key().public_numbers()


@pytest.mark.parametrize("bits", [2048, 4096])
def test_zone_record_is_one_line_of_short_strings(bits: int) -> None:
    key = key_files.generate("rsa", bits)
    value = key_files.txt_value(key)
    line = key_files.zone_record("Example.com.", "relay2026", value)
    assert "\n" not in line
    m = re.fullmatch(r'relay2026\._domainkey\.Example\.com\. IN TXT \( ((?:"[^"]*" ?)+) \)', line)
    assert m, line
    strings = re.findall(r'"([^"]*)"', m.group(1))
    assert len(strings) >= 2
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == value


def test_generate_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="rsa or ed25519"):
        key_files.generate("dsa", 2048)
    with pytest.raises(ConfigError, match="2048"):
        key_files.generate("rsa", 1024)
