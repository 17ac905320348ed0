"""DKIM signing cost: ours (dkimpy canonicalization + cryptography) vs plain dkimpy, and memory.

    .venv/bin/python bench/bench_dkim.py [--runs N]

Prints the median per-message time for a 2 KB message (RSA-2048 ours and dkimpy,
Ed25519 ours) and the peak RSS of a fresh process that signs a 25 MB message.
Budget (README.md's figures table): RSA-2048 <= 2 ms per 2 KB message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dkim

from agent.config import from_dict
from agent.dkim import key_files
from agent.dkim.signing import Signer, include_headers, parse


def message_2k() -> bytes:
    head = (
        "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.net>\r\nSubject: benchmark\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    body = ("The quick brown fox jumps over the lazy dog. " * 30 + "\r\n") * 1
    msg = (head + body).encode()
    return msg + b"x" * (2048 - len(msg) - 2) + b"\r\n"


def median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def write_key(directory: str, name: str, algorithm: str) -> str:
    path = os.path.join(directory, name)
    key_files.write_private_key(key_files.generate(algorithm, 2048), path)
    return path


def signer_for(path: str) -> Signer:
    return Signer(from_dict({"dkim": [{"domain": "example.com", "selector": "s", "key_file": path}]}))


def peak_rss_mb(key_path: str, size: int) -> tuple[float, float, float]:
    """(peak MB allocated while signing, process peak RSS MB, seconds) in a fresh process."""
    code = f"""
import resource, sys, time, tracemalloc
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from agent.config import from_dict
from agent.dkim.signing import Signer
from agent.mail.longlines import make_safe
s = Signer(from_dict({{"dkim": [{{"domain": "example.com", "selector": "s", "key_file": {key_path!r}}}]}}))
head = b"From: a@example.com\\r\\nTo: b@example.net\\r\\nSubject: big\\r\\n\\r\\n"
msg = head + (b"y" * 76 + b"\\r\\n") * ({size} // 78)
t0 = time.perf_counter()
out = s.sign(make_safe(msg), "example.com")
dt = time.perf_counter() - t0
del out
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
out = s.sign(make_safe(msg), "example.com")
print(tracemalloc.get_traced_memory()[1] // 1024, rss, dt)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    traced, rss, secs = out.split()
    return int(traced) / 1024, int(rss) / 1024, float(secs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    msg = message_2k()
    with tempfile.TemporaryDirectory() as tmp:
        rsa_path = write_key(tmp, "rsa.pem", "rsa")
        ed_path = write_key(tmp, "ed.pem", "ed25519")
        rsa_signer, ed_signer = signer_for(rsa_path), signer_for(ed_path)
        with open(rsa_path, "rb") as fh:
            pem = fh.read()
        include = list(include_headers(parse(msg).headers))
        rows = [
            ("RSA-2048, ours", median_ms(lambda: rsa_signer.sign(msg, "example.com"), args.runs)),
            (
                "RSA-2048, plain dkimpy",
                median_ms(
                    lambda: dkim.sign(
                        msg,
                        b"s",
                        b"example.com",
                        pem,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=include,
                    ),
                    args.runs,
                ),
            ),
            ("Ed25519, ours", median_ms(lambda: ed_signer.sign(msg, "example.com"), args.runs)),
        ]
        traced, rss, secs = peak_rss_mb(rsa_path, 25 * 1024 * 1024)
    print(f"DKIM signing, {len(msg)}-byte message, median of {args.runs} runs")
    for name, ms in rows:
        print(f"  {name:<24} {ms:8.3f} ms")
    print("25 MB message, make_safe + RSA-2048 sign, fresh process:")
    print(
        f"  {secs * 1000:.0f} ms; allocated while signing (tracemalloc peak, input excluded) {traced:.0f} MB"
    )
    print(f"  whole process peak RSS {rss:.0f} MB (interpreter + libraries + the 25 MB input)")


if __name__ == "__main__":
    main()
