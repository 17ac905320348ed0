"""Talking to a running daemon over its submission socket (CLI side)."""

from __future__ import annotations

import socket


def _reply(sock: socket.socket) -> str:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data.decode(errors="replace")


def command(path: str, verb: str, timeout: float = 5.0) -> str | None:
    """Send one SMTP command after EHLO; None when no daemon listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            _reply(s)
            s.sendall(b"EHLO localhost\r\n")
            _reply(s)
            s.sendall(verb.encode() + b"\r\n")
            answer = _reply(s)
            s.sendall(b"QUIT\r\n")
            return answer.strip()
    except OSError:
        return None


def running(path: str) -> bool:
    return command(path, "NOOP", timeout=2.0) is not None


def flush(path: str) -> bool:
    answer = command(path, "ETRN relay-agent")
    return bool(answer and answer.startswith("250"))
