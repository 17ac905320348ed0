"""DKIM signing: dkimpy's canonicalization and header hashing, `cryptography`'s private-key step.

dkimpy computes RSA in pure Python (slow: bench/results/code-comment-figures.md) and needs PyNaCl for
Ed25519. We keep everything that decides *what* is signed in dkimpy (header
selection, relaxed header canonicalization, the b= blanking and folding of the
signature header) and swap only the private-key operation and, for speed, the
body's relaxed canonicalization (checked byte for byte against dkimpy's), so a signature
is byte-identical to `dkim.sign()` with the same key, headers and timestamp
(RSASSA-PKCS1-v1_5 is deterministic; tests/test_dkim_sign.py checks it).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

from agent.config import Config
from agent.dkim import key_files
from agent.dkim.policy import signing_domain
from agent.errors import ConfigError, MessageError

__all__ = [
    "SIGNED_HEADERS",
    "Draft",
    "Signer",
    "canonical_lines",
    "draft",
    "include_headers",
    "relaxed_body",
    "signed",
]

# Signed when present (RFC 6376 5.4.1 recommendations plus one-click unsubscribe, RFC 8058).
SIGNED_HEADERS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"reply-to",
        b"in-reply-to",
        b"references",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
    }
)
HEADER_NAME = b"DKIM-Signature"
CANON = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# Only from a run's first blank: tried from every blank of a long run that is not followed
# by CRLF, the plain pattern takes quadratic time (200 KB of blanks: tens of seconds).
_TRAILING_WSP = re.compile(rb"(?<![\t ])[\t ]+\r\n")
_WSP_TO_SQUEEZE = re.compile(rb"\t[\t ]*| [\t ]+")  # a lone space is canonical already


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalization, byte for byte (tests/test_dkim_sign.py checks),
    without rewriting every single space between two words, which dkimpy substitutes one by one."""
    canonical: bytes = correct_empty_body(strip_trailing_lines(canonical_lines(body)))
    return canonical


def canonical_lines(body: bytes) -> bytes:
    """Relaxed canonicalization's two substitutions (blanks before CRLF dropped, runs of
    blanks made one space): both match within a line only, so a stream may apply them to
    pieces cut at line ends (agent.dkim.body_hash)."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_SQUEEZE.sub(b" ", body)
    return body


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    key: key_files.PrivateKey

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else b"ed25519-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        """The raw signature over a SHA-256 digest of the canonicalized header data."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        # RFC 8463 3: Ed25519 signs the SHA-256 hash, not the data itself (as dkimpy does).
        return self.key.sign(digest)


@dataclass(frozen=True)
class ParsedMessage:
    headers: list[Any]  # dkimpy's [name, value] pairs, values with their CRLF
    canon_headers: list[Any]
    body_hash: bytes  # base64 SHA-256 of the relaxed-canonicalized body


def parse(message: bytes, body_hash: bytes | None = None) -> ParsedMessage:
    """Split and canonicalize once; every signature on the message reuses it.

    With `body_hash` (a streamed body's, agent.dkim.body_hash) `message` is the header block
    only and its body is not hashed here.
    """
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        head, body = b"", message[2:]
    elif end < 0:
        head, body = message, b""
    else:
        # Parsing only the header block keeps dkimpy from splitting a 25 MB body into lines.
        head, body = message[: end + 2], message[end + 4 :]
    try:
        headers = dkim.rfc822_parse(head)[0]
    except dkim.MessageFormatError as exc:
        raise MessageError(f"cannot DKIM-sign: {exc}") from None
    if body_hash is None:
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    return ParsedMessage(headers, CANON.canonicalize_headers(headers), body_hash)


def include_headers(headers: list[Any]) -> tuple[bytes, ...]:
    """h=: each present signed header once per occurrence, then From once more (over-signing)."""
    names = [bytes(name).lower() for name, _ in headers if bytes(name).lower() in SIGNED_HEADERS]
    if b"from" not in names:
        raise MessageError("cannot DKIM-sign a message without a From: header")
    return (*names, b"from")


@dataclass(frozen=True)
class Draft:
    """A DKIM-Signature whose header hash is done but whose private-key step is not.

    The split lets the daemon hash on its event loop and run `header()` (RSA,
    which releases the GIL) on its commit thread, beside the loop.
    """

    key: SigningKey
    fields: tuple[tuple[bytes, bytes], ...]
    digest: bytes

    def header(self) -> bytes:
        """The DKIM-Signature header line, folded and CRLF-terminated."""
        fields = (*self.fields[:-1], (b"b", base64.b64encode(self.key.sign_digest(self.digest))))
        value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        folded: bytes = dkim.fold(value, namelen=len(HEADER_NAME), linesep=b"\r\n")
        return HEADER_NAME + b": " + folded


def draft(parsed: ParsedMessage, key: SigningKey, timestamp: int) -> Draft:
    """Everything of one signature but the private-key step, built as dkimpy's gen_header does."""
    include = include_headers(parsed.headers)
    domain = key.domain.encode("ascii")
    fields = (
        (b"v", b"1"),
        (b"a", key.algorithm),
        (b"c", CANON.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", parsed.body_hash),
        # a placeholder long enough that b= folds onto its own line, as dkimpy does
        (b"b", b"0" * 60),
    )
    folded = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME), linesep=b"\r\n")
    blanked = dkim.RE_BTAG.sub(b"\\1", folded)
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher, CANON, parsed.canon_headers, include, (HEADER_NAME, b" " + blanked), dict(fields)
    )
    return Draft(key, fields, hasher.digest())


class Signer:
    """Every configured key, loaded once; rebuilt on SIGHUP by building a new Signer."""

    def __init__(self, cfg: Config) -> None:
        self.keys: tuple[SigningKey, ...] = tuple(_load(cfg))
        self.domains: frozenset[str] = frozenset(k.domain for k in self.keys)

    def has_key_for(self, from_domain: str) -> bool:
        return signing_domain(from_domain, self.domains) is not None

    def keys_for(self, from_domain: str) -> tuple[SigningKey, ...]:
        domain = signing_domain(from_domain, self.domains)
        return tuple(k for k in self.keys if k.domain == domain) if domain else ()

    def drafts(
        self, message: bytes, from_domain: str, timestamp: int | None = None, body_hash: bytes | None = None
    ) -> tuple[Draft, ...]:
        """One draft per key of the chosen domain; none when no key applies. With `body_hash`,
        `message` is only the header block of a message whose body was hashed as it streamed."""
        keys = self.keys_for(from_domain)
        if not keys:
            return ()
        parsed = parse(message, body_hash)
        now = int(time.time()) if timestamp is None else timestamp
        return tuple(draft(parsed, k, now) for k in keys)

    def sign(self, message: bytes, from_domain: str, timestamp: int | None = None) -> bytes:
        """The message with one DKIM-Signature per key of the chosen domain prepended.

        Unchanged when no key applies: whether that is allowed is the caller's policy.
        Any existing DKIM-Signature stays where it is, below ours.
        """
        return signed(message, self.drafts(message, from_domain, timestamp))


def signed(message: bytes, drafts: tuple[Draft, ...]) -> bytes:
    """`message` with the finished signatures prepended (itself when there are none)."""
    return b"".join(d.header() for d in drafts) + message if drafts else message


def _load(cfg: Config) -> list[SigningKey]:
    seen: set[tuple[str, str]] = set()
    out = []
    for entry in cfg.dkim:
        ident = (entry.domain, entry.selector)
        if ident in seen:
            raise ConfigError(f"[[dkim]] {entry.selector}._domainkey.{entry.domain} is configured twice")
        seen.add(ident)
        if not entry.selector.isascii() or not entry.domain.isascii():
            raise ConfigError(f"[[dkim]] {entry.domain}/{entry.selector}: use the A-label (punycode) form")
        out.append(SigningKey(entry.domain, entry.selector, key_files.load_private_key(entry.key_file)))
    return out
