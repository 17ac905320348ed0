"""Independent DKIM verifiers for tests: Perl Mail::DKIM, dkimpy, and a small RFC 6376 checker.

    records = dkim_dns_records(cfg)              # {"sel._domainkey.dom": [("v=DKIM1; ...", "...")]}
    with DnsServer(records) as dns:
        ok, detail = verify_perl(signed, dns.port)
    assert verify_dkimpy(signed, records)

Perl's Mail::DKIM (Debian 12) has no Ed25519: its result for such a signature is not
"pass". For Ed25519 use verify_dkimpy plus verify_independent (cryptography over our
own relaxed canonicalization, sharing no code with the signer).
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from agent.dkim import key_files

RecordValue = str | Sequence[str] | Sequence[str | Sequence[str]]

_PERL = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my $port = shift @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1,
    udp_timeout => 3, tcp_timeout => 3, retry => 1));
binmode STDIN;
my $v = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) { $line =~ s/\015?\012\z/\015\012/; $v->PRINT($line); }
$v->CLOSE;
print join("\t", "overall", $v->result, $v->result_detail // ""), "\n";
for my $s ($v->signatures) {
    print join("\t", "sig", $s->domain // "", $s->selector // "", $s->result // "",
        $s->result_detail // ""), "\n";
}
"""


def verify_perl_results(message: bytes, nameserver_port: int) -> list[tuple[str, str]]:
    """[(\"selector._domainkey.domain\", result)] per signature, top first; result e.g. \"pass\"."""
    return [(name, result) for name, result, _ in _run_perl(message, nameserver_port)[1]]


def verify_perl(message: bytes, nameserver_port: int) -> tuple[bool, str]:
    """(every signature passes, Mail::DKIM's own report)."""
    overall, sigs = _run_perl(message, nameserver_port)
    ok = bool(sigs) and all(result == "pass" for _, result, _ in sigs)
    detail = "; ".join([overall] + [f"{name}={result} ({why})" for name, result, why in sigs])
    return ok, detail


def _run_perl(message: bytes, port: int) -> tuple[str, list[tuple[str, str, str]]]:
    proc = subprocess.run(
        ["perl", "-e", _PERL, str(port)], input=message, capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"perl Mail::DKIM failed: {proc.stderr.decode(errors='replace')}")
    overall = ""
    sigs = []
    for line in proc.stdout.decode().splitlines():
        kind, *rest = line.split("\t")
        if kind == "overall":
            overall = " ".join(rest)
        elif kind == "sig":
            domain, selector, result, why = [*rest, "", "", "", ""][:4]
            sigs.append((f"{selector}._domainkey.{domain}", result, why))
    return overall, sigs


def _flatten(value: RecordValue) -> str:
    """One TXT record's text, whatever shape it was given in (str, strings, [strings])."""
    if isinstance(value, str):
        return value
    items = list(value)
    if len(items) == 1 and not isinstance(items[0], str):
        return "".join(items[0])
    return "".join(v if isinstance(v, str) else "".join(v) for v in items)


def _lookup(records: Mapping[str, RecordValue]) -> Any:
    table = {name.rstrip(".").lower(): _flatten(v).encode() for name, v in records.items()}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return table.get(name.decode().rstrip(".").lower())

    return dnsfunc


def _sig_count(message: bytes) -> int:
    return len(re.findall(rb"(?im)^dkim-signature:", message.split(b"\r\n\r\n", 1)[0]))


def verify_dkimpy_results(message: bytes, records: Mapping[str, RecordValue]) -> list[bool]:
    """dkimpy's verdict for each DKIM-Signature, top first."""
    d = dkim.DKIM(message)
    out = []
    for idx in range(_sig_count(message)):
        try:
            out.append(bool(d.verify(idx, dnsfunc=_lookup(records))))
        except dkim.DKIMException:
            out.append(False)
    return out


def verify_dkimpy(message: bytes, records: Mapping[str, RecordValue], index: int | None = None) -> bool:
    """Every signature (or only the one at `index`, 0 = top) verifies with dkimpy."""
    results = verify_dkimpy_results(message, records)
    if index is not None:
        return index < len(results) and results[index]
    return bool(results) and all(results)


def dkim_dns_records(cfg_or_keys: Any) -> dict[str, list[tuple[str, ...]]]:
    """TXT records for configured keys, ready for DnsServer and verify_dkimpy.

    Accepts a Config, a Signer, or an iterable of DkimKey / (domain, selector, key_or_path).
    Each value is one record split into <= 255-character strings.
    """
    out: dict[str, list[tuple[str, ...]]] = {}
    for domain, selector, key in _keys(cfg_or_keys):
        value = key_files.txt_value(key)
        out[key_files.record_name(domain, selector)] = [tuple(key_files.split_txt(value))]
    return out


def _keys(source: Any) -> Iterable[tuple[str, str, key_files.PrivateKey]]:
    if hasattr(source, "keys") and not hasattr(source, "dkim") and not isinstance(source, Mapping):
        source = source.keys  # a Signer
    elif hasattr(source, "dkim"):
        source = source.dkim  # a Config
    for item in source:
        if hasattr(item, "key_file"):
            yield item.domain, item.selector, key_files.load_private_key(item.key_file)
        elif hasattr(item, "key"):
            yield item.domain, item.selector, item.key
        else:
            domain, selector, key = item
            if isinstance(key, str):
                key = key_files.load_private_key(key)
            yield domain, selector, key


# --- an independent checker: no dkimpy, RFC 6376 3.4.2 / 3.4.4 written out again ---


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip().lower() + b":" + value


def _relaxed_body(body: bytes) -> bytes:
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def _tags(value: bytes) -> dict[bytes, bytes]:
    out = {}
    for item in value.split(b";"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            out[k.strip()] = re.sub(rb"\s+", b"", v)
    return out


def verify_independent(message: bytes, public_keys: Mapping[str, str], index: int = 0) -> bool:
    """Check one relaxed/relaxed signature with `cryptography` only.

    public_keys maps "selector._domainkey.domain" to the record's p= value (base64).
    """
    head, _, body = message.partition(b"\r\n\r\n")
    fields = _headers(head + b"\r\n")
    sigs = [(n, v) for n, v in fields if n.strip().lower() == b"dkim-signature"]
    sig_name, sig_value = sigs[index]
    tags = _tags(sig_value)
    if tags.get(b"c") != b"relaxed/relaxed":
        raise ValueError("verify_independent handles relaxed/relaxed only")
    if base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()) != tags[b"bh"]:
        return False
    data = _signed_header_data(fields, tags[b"h"].lower().split(b":"), sig_name, sig_value)
    name = f"{tags[b's'].decode()}._domainkey.{tags[b'd'].decode()}"
    return _check(tags[b"a"], base64.b64decode(public_keys[name]), base64.b64decode(tags[b"b"]), data)


def _signed_header_data(
    fields: list[tuple[bytes, bytes]], names: list[bytes], sig_name: bytes, sig_value: bytes
) -> bytes:
    remaining = list(fields)
    data = b""
    for want in names:
        # RFC 6376 5.4.2: the last unused instance first; a missing one signs as nothing
        for i in range(len(remaining) - 1, -1, -1):
            if remaining[i][0].strip().lower() == want:
                data += _relaxed_header(*remaining.pop(i)) + b"\r\n"
                break
    blank_b = re.sub(rb"(\bb[ \t\r\n]*=)[^;]*", rb"\1", sig_value)
    return data + _relaxed_header(sig_name, blank_b)


def _check(algorithm: bytes, public: bytes, signature: bytes, data: bytes) -> bool:
    try:
        if algorithm == b"ed25519-sha256":
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(
                signature, hashlib.sha256(data).digest()
            )
        elif algorithm == b"rsa-sha256":
            key = serialization.load_der_public_key(public)
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
