"""bench/tls_sink.py in its own process, shaped like the relay stand-in for AgentEnv.

The upstream of the benchmarks that measure the agent, not the relay: in production
the relay is another machine, and the aiosmtpd stand-in would spend our 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common


class SinkRelay:
    """bench/tls_sink.py in its own process, with what AgentEnv needs of a relay."""

    def __init__(self, tmp: Path) -> None:
        from tests.support.relay_standin import _Pki

        pki = _Pki.get()
        self.ca_file = str(tmp / "sink-ca.pem")
        pki.ca.cert_pem.write_to_path(self.ca_file)
        cert = str(tmp / "sink-cert.pem")
        pki.good.private_key_and_cert_chain_pem.write_to_path(cert)
        self.username, self.password = "bench@example.com", "bench-" + os.urandom(6).hex()
        self.proc = subprocess.Popen(
            [sys.executable, str(common.BENCH / "tls_sink.py"), cert, self.username, self.password],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def __enter__(self) -> SinkRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def relay_settings(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": "starttls",
            "username": self.username,
            "ca_file": self.ca_file,
            "timeout": 10,
            "data_timeout": 10,
        }

    def finish(self) -> dict[str, Any]:
        """Stop the sink; its count, first/last arrival (monotonic) and CPU seconds."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
