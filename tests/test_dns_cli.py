"""`relay-agent dns check` as a real process: output, JSON shape and exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns import message as dns_message
from dns import rcode as dns_rcode

from agent.dkim import key_files
from tests.support import dnsmasq
from tests.support.dnsmasq import free_udp_port
from tests.test_dnscheck import GOOD_SPF, TOKEN, USER, DnsServer, Keys, dkim_txt, good

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Iterator[dnsmasq.DnsServer]:
    records = good("good.example", keys.rsa) | good("warn.example", keys.rsa) | good("bad.example", keys.rsa)
    records["_dmarc.warn.example"] = ["v=DMARC1; p=none"]
    records["bad.example"] = [TOKEN]  # no SPF
    records["sel._domainkey.bad.example"] = [dkim_txt(keys.other)]
    records["from.example"] = [TOKEN, GOOD_SPF]
    records["_dmarc.from.example"] = ["v=DMARC1; p=reject"]
    with DnsServer(records) as server:
        yield server


def write_config(
    tmp: Path, keys: Keys, nameserver: str = "", domains: tuple[str, ...] = ("good.example",)
) -> str:
    lines = ["[relay]", f'username = "{USER}"', "[sender]", 'default_from = "cron@from.example"']
    lines += ["[dns]", f'nameserver = "{nameserver}"']
    for d in domains:
        lines += ["[[dkim]]", f'domain = "{d}"', 'selector = "sel"', f'key_file = "{keys.rsa_file}"']
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_AGENT_CONFIG"}
    code = "from agent.cli.dns import app; app()"
    cmd = [PYTHON, "-c", code, "check", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_all_pass_exit_0(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys)
    p = cli("--config", cfg, "--nameserver", dns.nameserver, "good.example")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines] == [
        ["good.example", c, "PASS"] for c in ("token", "spf", "dkim", "dmarc")
    ]
    assert p.stderr == ""


def test_warn_alone_is_exit_0(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys, domains=("warn.example",))
    p = cli("--config", cfg, "--nameserver", dns.nameserver, "warn.example")
    assert p.returncode == 0, p.stderr
    assert "warn.example dmarc WARN _dmarc.warn.example: p=none: policy none only monitors" in p.stdout


def test_fail_exit_1_with_publish_lines(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys, domains=("bad.example",))
    p = cli("--config", cfg, "--nameserver", dns.nameserver, "bad.example")
    assert p.returncode == 1, p.stderr
    lines = p.stdout.splitlines()
    spf = lines.index("bad.example spf FAIL no SPF record")
    assert lines[spf + 1] == '  publish: bad.example. IN TXT "v=spf1 include:elastx.email -all"'
    dkim = next(i for i, ln in enumerate(lines) if ln.startswith("bad.example dkim FAIL"))
    want = key_files.zone_record("bad.example", "sel", key_files.txt_value(keys.rsa))
    assert lines[dkim + 1] == f"  publish: {want}"
    assert sum(ln.startswith("  publish: ") for ln in lines) == 2


def test_json_shape(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys, domains=("bad.example",))
    p = cli("--config", cfg, "--nameserver", dns.nameserver, "--json", "bad.example", "good.example")
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    assert isinstance(data, list) and len(data) == 8
    assert all(set(item) == {"domain", "check", "status", "detail", "fix"} for item in data)
    assert [(d["domain"], d["check"]) for d in data][:4] == [
        ("bad.example", "token"),
        ("bad.example", "spf"),
        ("bad.example", "dkim"),
        ("bad.example", "dmarc"),
    ]
    assert data[1]["status"] == "FAIL" and data[1]["fix"].startswith("bad.example. IN TXT")
    assert all(d["fix"] is None for d in data if d["status"] != "FAIL")
    # good.example has no key in this config: unsigned = "reject" makes that a FAIL
    assert data[6]["status"] == "FAIL" and "no DKIM key configured" in data[6]["detail"]


def test_default_domains_and_config_nameserver(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys, nameserver=dns.nameserver, domains=("good.example", "good.example"))
    p = cli("--config", cfg, "--json")
    data = json.loads(p.stdout)
    assert sorted({d["domain"] for d in data}) == ["from.example", "good.example"]
    assert [d["domain"] for d in data].count("good.example") == 5  # one dkim line per [[dkim]] table
    from_dkim = next(d for d in data if d["domain"] == "from.example" and d["check"] == "dkim")
    assert from_dkim["status"] == "FAIL"
    assert p.returncode == 1


def test_flag_overrides_config_nameserver(dns: dnsmasq.DnsServer, keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys, nameserver=f"127.0.0.1:{free_udp_port()}")
    p = cli("--config", cfg, "--nameserver", dns.nameserver, "good.example")
    assert p.returncode == 0, p.stderr


def test_silent_nameserver_exit_2_one_line(keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        start = time.monotonic()
        p = cli("--config", cfg, "--nameserver", f"127.0.0.1:{s.getsockname()[1]}", "good.example")
        elapsed = time.monotonic() - start
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.splitlines() == ["relay-agent: DNS query for good.example failed: no answer within 3 s"]
    assert elapsed < 8


def test_closed_port_exit_2(keys: Keys, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, keys)
    p = cli("--config", cfg, "--nameserver", f"127.0.0.1:{free_udp_port()}", "good.example")
    assert p.returncode == 2
    (line,) = p.stderr.splitlines()
    assert line.startswith("relay-agent: DNS query for good.example failed: ")


class RcodeServer:
    """A real UDP nameserver on 127.0.0.1 that answers every query with one error rcode."""

    def __init__(self, rcode: dns_rcode.Rcode) -> None:
        self.rcode = rcode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            reply = dns_message.make_response(dns_message.from_wire(data))
            reply.set_rcode(self.rcode)
            self.sock.sendto(reply.to_wire(), peer)

    def __enter__(self) -> str:
        self.thread.start()
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("rcode", [dns_rcode.REFUSED, dns_rcode.SERVFAIL])
def test_refused_or_servfail_is_exit_2(keys: Keys, tmp_path: Path, rcode: dns_rcode.Rcode) -> None:
    cfg = write_config(tmp_path, keys)
    with RcodeServer(rcode) as nameserver:
        p = cli("--config", cfg, "--nameserver", nameserver, "good.example")
    assert p.returncode == 2
    (line,) = p.stderr.splitlines()
    assert line.startswith("relay-agent: DNS query for good.example failed: ")
    assert dns_rcode.to_text(rcode) in line


def test_missing_config_exit_78(tmp_path: Path) -> None:
    p = cli("--config", str(tmp_path / "none.toml"), "good.example")
    assert p.returncode == 78
    assert p.stderr.startswith("relay-agent: config file ")


def test_nothing_to_check_exit_64(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    p = cli("--config", str(path), "--nameserver", "127.0.0.1:1")
    assert p.returncode == 64
    assert p.stderr.startswith("relay-agent: no domain to check")


def test_bad_nameserver_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    p = cli("--config", str(path), "--nameserver", "dns.example", "good.example")
    assert p.returncode == 78
    assert "is not an IP address" in p.stderr
