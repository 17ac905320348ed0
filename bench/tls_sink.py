"""A lean SMTP sink with STARTTLS and AUTH PLAIN/LOGIN, for throughput benchmarks only.

The relay stand-in in tests/ is aiosmtpd, which reads DATA a line at a time in
Python: on a 2-core machine it uses about 1.2 ms of CPU per message, a quarter of
what the whole end-to-end run costs, although in production the relay is another
machine. This sink reads pipelined commands and DATA in whole buffers and does
nothing else (no checks beyond AUTH), so the end-to-end figure measures the agent.
It runs as its own process; it prints one JSON line when listening and, on
SIGTERM, one with the message count, the first and last arrival times
(time.monotonic, comparable across processes) and its own CPU time.

    python bench/tls_sink.py CERT_AND_KEY_PEM USER PASSWORD [PORT]
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import sys
import time

EHLO_PLAIN = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 STARTTLS\r\n"
EHLO_TLS = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 AUTH PLAIN LOGIN\r\n"


class Stats:
    cpu0 = 0.0  # CPU time when the first message arrived (handshakes before it are not counted)
    count = 0
    first = 0.0
    last = 0.0
    connections = 0


class Sink(asyncio.Protocol):
    def __init__(self, ctx: ssl.SSLContext, user: str, password: str) -> None:
        self.ctx, self.user, self.password = ctx, user, password
        self.buf = b""
        self.in_data = False
        self.tls = False
        self.authed = False
        self.login: list[str] | None = None
        self.transport: asyncio.Transport | None = None
        self.upgrade: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Stats.connections += 1
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.upgrade is not None and not self.upgrade.done():
            return  # the client's first TLS bytes, before start_tls has handed us the TLS transport
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    self.buf = self.buf[-4:]  # a sink keeps nothing: only what may start the end
                    break
                self.buf = self.buf[end + 5 :]
                self.in_data = False
                Stats.count += 1
                Stats.last = time.monotonic()
                if not Stats.first:
                    Stats.first, Stats.cpu0 = Stats.last, time.process_time()
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                break
            self.buf = rest
            reply = self.command(line)
            if reply is None:  # STARTTLS: the upgrade takes over the transport
                self._flush(out)
                return
            out.append(reply)
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def command(self, line: bytes) -> bytes | None:
        if self.login is not None:
            self.login.append(base64.b64decode(line).decode())
            if len(self.login) == 1:
                return b"334 UGFzc3dvcmQ6\r\n"
            return self._auth(*self.login)
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO_TLS if self.tls else EHLO_PLAIN
        if verb == b"STAR":
            assert self.transport is not None
            # no more plain reads: the ClientHello must reach the TLS layer, not this parser
            self.transport.pause_reading()
            self.transport.write(b"220 2.0.0 go ahead\r\n")
            self.upgrade = asyncio.ensure_future(self._starttls())
            return None
        if verb == b"AUTH":
            parts = line.split()
            if parts[1].upper() == b"LOGIN":
                self.login = []
                return b"334 VXNlcm5hbWU6\r\n"
            _, user, password = base64.b64decode(parts[2]).split(b"\0")
            return self._auth(user.decode(), password.decode())
        if verb == b"MAIL" and not self.authed:  # as the Elastx relay: no mail without AUTH
            return b"530 5.7.0 Authentication required\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            assert self.transport is not None
            self.transport.write(b"221 bye\r\n")
            self.transport.close()
            return b""
        return b"250 2.0.0 Ok\r\n"  # MAIL, RCPT, RSET, NOOP

    def _auth(self, user: str, password: str) -> bytes:
        self.login = None
        ok = self.tls and user == self.user and password == self.password
        self.authed = ok
        return b"235 2.7.0 ok\r\n" if ok else b"535 5.7.8 no\r\n"

    async def _starttls(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.tls, self.buf = True, b""
        self.transport = await loop.start_tls(self.transport, self, self.ctx, server_side=True)  # type: ignore[assignment]
        self.upgrade = None
        self.data_received(b"")  # what arrived during the handshake


async def main(cert: str, user: str, password: str, port: str = "0") -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Sink(ctx, user, password), "127.0.0.1", int(port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await stop.wait()
    cpu = time.process_time() - Stats.cpu0
    print(
        json.dumps(
            {
                "count": Stats.count,
                "first": Stats.first,
                "last": Stats.last,
                "connections": Stats.connections,
                "cpu": cpu,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
