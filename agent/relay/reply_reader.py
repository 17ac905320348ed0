"""Reading pipelined SMTP replies (RFC 2920) on a connection aiosmtplib opened.

aiosmtplib reads one reply per command it sent; after AUTH the relay client puts
this protocol in front of aiosmtplib's to read several replies in order.
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiosmtplib
from aiosmtplib.response import SMTPResponse

MAX_REPLY = 32 * 1024  # a reply this long without its last line is not SMTP: give up


class Replies(asyncio.Protocol):
    """Reads pipelined replies in order. Outside a transaction it hands incoming bytes to aiosmtplib's
    protocol (for QUIT), which also always hears about EOF and a lost link, so is_connected stays accurate."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._buf = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: aiosmtplib.SMTPException | None = None
        self.active = False

    def start(self) -> None:
        self._buf.clear()
        self._replies.clear()
        self.active = True

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self._inner.data_received(data)
            return
        self._buf += data
        try:
            self._parse()
        except aiosmtplib.SMTPException as exc:
            self._error = exc
        self._wake()

    def _parse(self) -> None:
        start = 0
        while (end := self._buf.find(b"\n", start)) != -1:
            line = bytes(self._buf[start : end + 1])
            if not line[:3].isdigit():
                raise aiosmtplib.SMTPResponseException(-1, "malformed reply from relay")
            start = end + 1
            if line[3:4] != b"-":
                self._replies.append(self._complete(start))
                start = 0
        if len(self._buf) > MAX_REPLY:
            raise aiosmtplib.SMTPResponseException(-1, "reply from relay too long")

    def _complete(self, end: int) -> SMTPResponse:
        lines = bytes(self._buf[:end]).split(b"\n")[:-1]
        del self._buf[:end]
        text = b"\n".join(line[4:].strip() for line in lines).decode("utf-8", "surrogateescape")
        return SMTPResponse(int(lines[0][:3]), text)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool | None:
        self._lost("Unexpected EOF received")
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("Connection lost")
        self._inner.connection_lost(exc)

    def _lost(self, why: str) -> None:
        self._error = self._error or aiosmtplib.SMTPServerDisconnected(why)
        self._wake()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    async def read(self, timeout: float) -> SMTPResponse:
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()
