"""agent.dkim.dns_deferred: the daemon imports dkimpy without dnspython (~3 MB of RSS),
and a lookup through dkimpy still works, importing it then. Fresh interpreters each."""

from __future__ import annotations

import subprocess
import sys

from tests.support.dnsmasq import DnsServer

PROBE = """
import sys
from agent.dkim import dns_deferred
dns_deferred.defer()
import agent.daemon, dkim
print("dns" in sys.modules)
import dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers, r.port = ["127.0.0.1"], {port}
dns.resolver.default_resolver = r
print(dkim.get_txt(b"sel1._domainkey.example.com."))
print(getattr(sys.modules["dkim.dnsplug"], "__file__", None) is not None)
"""


def test_the_daemon_imports_dkim_without_dnspython_and_lookups_still_work() -> None:
    with DnsServer({"sel1._domainkey.example.com": ["v=DKIM1; p=abc"]}) as dns:
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(port=dns.port)], capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False"  # dkim and the daemon imported, dnspython not
    assert lines[1] == "b'v=DKIM1; p=abc'"  # the stand-in forwarded to dkimpy's own lookup
    assert lines[2] == "True"  # and the real dkim.dnsplug replaced it


def test_without_defer_dkimpy_would_import_dnspython() -> None:
    code = "import sys, dkim; print('dns.resolver' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True"  # what defer() saves: if dkimpy changes, drop it
