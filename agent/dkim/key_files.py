"""DKIM keys: load, generate, write, and the DNS TXT record that publishes them.

Pure key handling on top of `cryptography`; no dkimpy import here, so `dns check`
and `dkim keygen` stay cheap.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent import durable
from agent.errors import ConfigError

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyType = Literal["rsa", "ed25519"]

# RFC 1035: one TXT character-string carries at most 255 octets.
TXT_CHUNK = 255
MIN_RSA_BITS = 1024


def load_private_key(path: str) -> PrivateKey:
    """Read a PEM RSA or Ed25519 private key; refuse one that others could read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"DKIM key file {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"DKIM key file {path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(f"key file {path} is readable by others (mode {mode:04o}); chmod 600 {path}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"DKIM key file {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"DKIM key file {path}: not an unencrypted PEM private key ({reason})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"DKIM key file {path}: RSA key of {key.key_size} bits is too weak (>= 1024)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ConfigError(f"DKIM key file {path}: {type(key).__name__} is not an RSA or Ed25519 key")


def key_type(key: PrivateKey) -> KeyType:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"


def public_key_b64(key: PrivateKey) -> str:
    """The p= value: RSA SubjectPublicKeyInfo DER; Ed25519 the raw 32 bytes (RFC 8463 4.2)."""
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        der = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(der).decode("ascii")


def txt_value(key: PrivateKey) -> str:
    return f"v=DKIM1; k={key_type(key)}; p={public_key_b64(key)}"


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain.rstrip('.')}"


def split_txt(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 octets (ASCII assumed)."""
    return [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]


def zone_record(domain: str, selector: str, value: str) -> str:
    """One zone-file line: the record, split into quoted strings of <= 255 characters."""
    quoted = " ".join(f'"{part}"' for part in split_txt(value))
    return f"{record_name(domain, selector)}. IN TXT ( {quoted} )"


def generate(algorithm: str, bits: int = 2048) -> PrivateKey:
    if algorithm == "rsa":
        if bits < 2048 or bits > 8192:
            raise ConfigError(f"--bits {bits}: RSA keys must be 2048..8192 bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"algorithm {algorithm!r}: expected rsa or ed25519")


def private_pem(key: PrivateKey) -> bytes:
    # PKCS#8 serves both types and is what Mail::DKIM, OpenDKIM and dkimpy all read.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(key: PrivateKey, path: str) -> None:
    """Write the key mode 0600; never overwrite an existing file (a live key would be lost)."""
    pem = private_pem(key)
    try:
        key_file = durable.Writer(path, mode=0o600)  # O_EXCL, O_NOFOLLOW, 0600 whatever the umask
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        key_file.write(pem)
        key_file.sync()  # both remove the file when they fail
        durable.fsync_dir(durable.dirname(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
