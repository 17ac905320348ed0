"""SMTP DATA that never holds a big message whole in memory.

aiosmtpd collects DATA as a list of lines and joins them: a 25 MB message costs 50 MB
before cleanup sees it. This is its smtp_DATA (aiosmtpd 1.4.6) with only the storage
changed: the same CRLF-only line splitting (a bare LF or bare CR never ends a line, and only
`.` alone on a CRLF line ends the data: the SMTP smuggling fix of 1.4.5), the same
dot-unstuffing, the same 552 for too much data and 500 for an over-long line, replied only
after the final dot. The content goes to a spool.DataSink, in memory while small, in a
spool file in the queue's tmp/ beyond that.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import MISSING, SMTP, _DataState, syntax

from agent.queue.spool import DataSink, Spool, spool_error

log = logging.getLogger("mail.log")  # aiosmtpd's logger, as its own smtp_DATA uses


REFUSALS = {
    _DataState.TOO_LONG: "500 Line too long (see RFC5321 4.5.3.1.6)",
    _DataState.TOO_MUCH: "552 Error: Too much mail data",
}


def _finish(sink: DataSink) -> bytes | Spool:
    """The content, unless writing its spool file failed (then sink.error says why)."""
    if sink.error is None:
        try:
            return sink.finish()
        except OSError as exc:
            sink.error = spool_error(exc)
    return b""


class SpoolingData(SMTP):
    """SMTP whose DATA content goes to a DataSink in `event_handler.spool_dir()`. The handler's
    handle_DATA finds the content in `envelope.content`, or a big one as `envelope.spool`."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        sink = DataSink(self.event_handler.spool_dir())
        try:
            state = await self._read_data(sink)
            content = _finish(sink) if state == _DataState.NOMINAL else b""
            refusal = REFUSALS.get(state) or (sink.error.smtp_reply() if sink.error else "")
            if refusal:
                await self.push(refusal)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            if isinstance(content, Spool):
                self.envelope.content = self.envelope.original_content = b""
                setattr(self.envelope, "spool", content)  # noqa: B010 - aiosmtpd's Envelope has no slot for it
            else:
                self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            sink.discard()  # the spool, if the handler's cleanup has not removed it already
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, sink: DataSink) -> _DataState:
        """Read up to the final dot (aiosmtpd's loop); lines go to `sink` while all is well.

        aiosmtpd keeps the pieces of an over-long line until its CRLF, though it then refuses
        the message: a client sending LF-only lines had it hold everything. Only whether a
        line is unfinished matters once refused, so that is all this keeps."""
        num_bytes = 0
        limit = self.data_size_limit
        unfinished = False  # inside a line read in pieces (aiosmtpd: line_fragments non-empty)
        state = _DataState.NOMINAL
        while self.transport is not None:  # pragma: nobranch
            # eof_received cancels this coroutine: readuntil() never raises IncompleteReadError
            try:
                line: bytes = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("Connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as e:
                # the line exceeds the stream limit: drain it, reply after the data (RFC 5321 4.2.5)
                if state == _DataState.NOMINAL:
                    state = _DataState.TOO_LONG
                sink.discard()
                line = await self._reader.read(e.consumed)
            if not unfinished and line == b".\r\n":
                break
            num_bytes += len(line)
            if state == _DataState.NOMINAL and limit and num_bytes > limit:
                state = _DataState.TOO_MUCH
                sink.discard()  # nothing more of it is kept
            unfinished = not line.endswith(b"\r\n")
            if state == _DataState.NOMINAL and not unfinished and sink.error is None:  # a whole line
                if len(line) > self.line_length_limit:
                    state = _DataState.TOO_LONG
                    sink.discard()
                elif await self._add(sink, line[1:] if line.startswith(b".") else line):  # RFC 5321 4.5.2
                    await asyncio.sleep(0)  # a piece went to disk: let other clients run
        return state

    @staticmethod
    async def _add(sink: DataSink, line: bytes) -> bool:
        """sink.add(); a spool file that cannot be written fails the message, not the session:
        the rest of the data is still read (and dropped) up to the final dot, then the reply."""
        try:
            return sink.add(line)
        except OSError as exc:
            sink.error = spool_error(exc)
            sink.discard()
            return False
