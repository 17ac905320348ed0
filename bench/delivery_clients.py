"""The clients of bench_delivery.py, each run in a child process so that it does not share the
relay stand-in's GIL: `_submit` (smtplib over the daemon's Unix socket from threads) and `_push`
(aiosmtplib straight at the relay stand-in). Each prints its result as one JSON line.

    python bench/delivery_clients.py _submit SOCKET COUNT CONNS PER_CONN
    python bench/delivery_clients.py _push PORT CA_FILE USERNAME COUNT CONNS
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import common


def socket_message(i: int) -> bytes:
    msg = common.message().replace(b"Bcc: carol@example.net\n", b"")
    return common.crlf(msg.replace(b"Subject: ", f"Message-ID: <bench{i}@example.com>\nSubject: ".encode()))


# ----- child processes -----------------------------------------------------------------------


def child_submit(sock: str, count: int, conns: int, per_conn: int) -> dict[str, Any]:
    """Submit `count` messages over the Unix socket from `conns` threads, `per_conn` per session."""
    import smtplib
    import threading

    from tests.support.agent_env import UnixSMTP

    todo = list(range(count))
    lock = threading.Lock()
    errors: list[str] = []
    sessions = [0]

    def worker() -> None:
        while True:
            with lock:
                batch, todo[:] = todo[:per_conn], todo[per_conn:]
                sessions[0] += bool(batch)
            if not batch:
                return
            client = UnixSMTP(sock)
            client.ehlo("bench.localdomain")
            for i in batch:
                try:
                    client.sendmail("bench@example.com", ["alice@example.net"], socket_message(i))
                except smtplib.SMTPException as exc:
                    errors.append(str(exc))
            client.quit()

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "start": start,
        "end": time.monotonic(),
        "errors": errors[:3],
        "error_count": len(errors),
        "sessions": sessions[0],
    }


def child_push(port: int, ca_file: str, username: str, count: int, conns: int) -> dict[str, Any]:
    """aiosmtplib straight at the relay stand-in over `conns` persistent TLS connections."""
    import asyncio
    import ssl

    import aiosmtplib

    password = os.environ["BENCH_RELAY_PASSWORD"]
    ctx = ssl.create_default_context(cafile=ca_file)
    data = socket_message(0)

    async def one_connection(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=ctx, start_tls=True)
        await client.connect()
        await client.login(username, password)
        for _ in range(n):
            await client.sendmail("bench@example.com", ["alice@example.net"], data)
        await client.quit()

    async def run() -> None:
        share = [count // conns + (i < count % conns) for i in range(conns)]
        await asyncio.gather(*(one_connection(n) for n in share))

    start = time.monotonic()
    asyncio.run(run())
    return {"start": start, "end": time.monotonic()}


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} exited {proc.returncode}: {common.brief(proc.stderr)}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def child_main(args: list[str]) -> int:
    if args[0] == "_submit":
        result = child_submit(args[1], int(args[2]), int(args[3]), int(args[4]))
    elif args[0] == "_push":
        result = child_push(int(args[1]), args[2], args[3], int(args[4]), int(args[5]))
    else:
        raise SystemExit(f"unknown child mode {args[0]}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
