"""The daemon's start-up DNS check: the same checks as `dns check`, logged once, never blocking mail.

They run in a child process (`python -m agent.dns.startup CONFIG`, its `main`): dnspython
and the Public Suffix List would otherwise stay in the daemon's memory for good. This
module imports neither; only the child's `main` does.
"""

from __future__ import annotations

import logging
import sys
import threading

log = logging.getLogger("relay-agent")

TIMEOUT = 120.0  # a resolver that never answers: give up on the checks, not on the daemon


def start(config_path: str) -> None:
    """Run the checks in the background. A daemon thread, not the loop's executor: a slow
    resolver must not delay shutdown."""
    threading.Thread(target=log_warnings, args=(config_path,), daemon=True).start()


def log_warnings(config_path: str) -> None:
    """Run the child and log what it found, one line per failed check."""
    import subprocess

    cmd = [sys.executable, "-m", "agent.dns.startup"] + ([config_path] if config_path else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("dns: startup checks skipped: %s", exc)
        return
    for line in out.stdout.splitlines():
        log.warning("dns: %s", line)
    if out.returncode:
        log.warning("dns: startup checks failed: %s", (out.stderr.strip().splitlines() or ["?"])[-1])


def main(argv: list[str]) -> int:
    """In the child: print one line per FAIL of the config at argv[0] (else the default one)."""
    from agent import config
    from agent.dns import domain_check

    for line in domain_check.startup_warnings(config.load(argv[0] if argv else None)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
