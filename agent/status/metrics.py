"""Prometheus text exposition at /metrics: a tiny asyncio HTTP responder."""

from __future__ import annotations

import asyncio
import contextlib

from agent.status.counters import Counters

OUTCOMES = ("queued", "sent", "deferred", "bounced")


def render(c: Counters) -> str:
    lines = [
        "# HELP relay_agent_messages_total Messages by outcome, counted per message.",
        "# TYPE relay_agent_messages_total counter",
    ]
    lines += [f'relay_agent_messages_total{{outcome="{o}"}} {getattr(c, o)}' for o in OUTCOMES]
    return "\n".join(lines) + "\n"


async def serve(listen: str, counters: Counters) -> None:
    host, _, port = listen.rpartition(":")

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path == b"/metrics":
                body, status = render(counters).encode(), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, host.strip("[]"), int(port))
    async with server:
        await server.serve_forever()
