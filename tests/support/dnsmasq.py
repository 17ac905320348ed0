"""A real DNS server for tests: dnsmasq on 127.0.0.1, authoritative for TXT records we give it.

Usage:
    records = {"example.com": ["v=spf1 -all"], "s._domainkey.example.com": ["v=DKIM1; ...", "..."]}
    with DnsServer(records) as dns:
        dns.port  # query 127.0.0.1:dns.port

Each list item is one TXT record; a record given as a tuple/list of strings is
one TXT record made of several character-strings (e.g. a long DKIM key).
Names with no record answer NXDOMAIN/NODATA (--no-resolv, nothing forwarded).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

TxtValue = str | Sequence[str]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _txt_arg(name: str, value: TxtValue) -> str:
    parts = [value] if isinstance(value, str) else list(value)
    for p in parts:
        if '"' in p or "\\" in p:
            raise ValueError("test TXT strings must not contain quotes or backslashes")
        if len(p.encode()) > 255:
            raise ValueError("one TXT character-string is at most 255 octets; split it")
    quoted = ",".join(f'"{p}"' for p in parts)
    return f"--txt-record={name},{quoted}"


class DnsServer:
    def __init__(self, records: Mapping[str, Iterable[TxtValue]], port: int | None = None) -> None:
        self.records = {k: list(v) for k, v in records.items()}
        self.port = port or free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="dnsmasq-")

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = os.path.join(self._dir, "dnsmasq.conf")
        with open(conf, "w") as fh:
            for name, values in self.records.items():
                for v in values:
                    fh.write(_txt_arg(name, v)[2:] + "\n")
        args = [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            # answer NXDOMAIN (not REFUSED) for names we hold no record for
            "--local=/#/",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--conf-file={conf}",
            f"--pid-file={os.path.join(self._dir, 'pid')}",
            "--log-facility=-",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # A TXT query for a name we serve; answered = ready.
        deadline = time.monotonic() + 10
        query = _txt_query("ready.invalid")
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {err.strip()}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(query, ("127.0.0.1", self.port))
                    s.recvfrom(512)
                    return
                except OSError:
                    time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _txt_query(name: str) -> bytes:
    header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return header + qname + b"\x00\x10\x00\x01"
