"""A relay stand-in that fails on purpose, deciding each fault inside the SMTP session.

After STARTTLS a TCP proxy sees only ciphertext: it cannot tell "in the middle of DATA" from
"after the final dot". This server is the relay itself (RelayStandin: real SMTP on 127.0.0.1,
STARTTLS with the test CA, AUTH), so it knows exactly where each session is::

    relay = FaultRelay(Fault("dot", "drop"), Fault("mail", "421"))
    with relay:
        ... the daemon sends; the first transaction that reaches the final dot is received and
        recorded, then the connection is cut before the 250; the next MAIL gets a 421 ...
        relay.fired          # the faults that happened, in order
        relay.messages       # what it accepted (also the dot-drop's message: it was received)

The script is a queue: its head fires the next time the session reaches the head's stage, then
the next fault waits for its own stage, and once the script is empty the relay behaves.

Stages, in session order: "greeting" (the 220 banner), "tls" (the STARTTLS handshake), "ehlo",
"auth", "mail", "rcpt", "data" (the DATA command's 354), "body" (the message being sent),
"dot" (the reply to the final dot).

Kinds:
    "421" (or any code as Fault(stage, "reply", code=...))  answer that; 421 also closes
    "drop"   cut the connection there; at "body" after the first lines of the message have
             arrived, at "dot" after the whole message has: it counts as accepted (recorded),
             the 250 is never sent: the one fault a client cannot tell from a lost reply
    "stall"  answer only `seconds` later, then behave; a client that gives up first gets
             nothing, and at "dot" nothing is recorded (the relay keeps no message it could
             not acknowledge)
    "hang"   never answer (at "tls": send "220 Ready to start TLS", never do the handshake; at
             "body": stop reading); the session ends when the client gives up
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from tests.support.relay_standin import RelayStandin, _Smtp

STAGES = ("greeting", "tls", "ehlo", "auth", "mail", "rcpt", "data", "body", "dot")
KINDS = ("reply", "drop", "stall", "hang")
FOREVER = 3600.0  # a hang: cancelled by aiosmtpd when the client closes the connection
BODY_LINES_BEFORE_DROP = 2


@dataclass(frozen=True)
class Fault:
    stage: str
    kind: str  # "421" is short for kind="reply", code=421
    code: int = 421
    seconds: float = FOREVER

    def __post_init__(self) -> None:
        if self.kind.isdigit():
            object.__setattr__(self, "code", int(self.kind))
            object.__setattr__(self, "kind", "reply")
        if self.stage not in STAGES or self.kind not in KINDS:
            raise ValueError(f"no such fault: {self.stage} {self.kind}")
        if self.stage == "body" and self.kind not in ("drop", "hang"):
            raise ValueError("mid-DATA the relay can only drop the connection or stop reading")

    def __str__(self) -> str:
        what = f"{self.code}" if self.kind == "reply" else self.kind
        return f"{what} at {self.stage}" + (f" ({self.seconds:g}s)" if self.kind == "stall" else "")


class _FaultSmtp(_Smtp):
    """The stand-in's session with a fault hook before each command's reply."""

    relay: FaultRelay

    def __init__(self, relay: FaultRelay, connection_id: int, **kwargs: Any) -> None:
        super().__init__(relay, connection_id, **kwargs)
        self.relay = relay
        self._greeted = False

    async def push(self, status: Any) -> None:
        if not self._greeted:  # the first line of a session is its banner
            self._greeted = True
            if await self._fault("greeting"):
                return
        await super().push(status)

    async def _fault(self, stage: str) -> bool:
        """Apply the script's head if it is for this stage; True when it took the command's place."""
        if self.transport is None or self.transport.is_closing():
            return False  # a pipelined command after a 421 or a drop: it fails on its own
        fault = self.relay._take(stage)
        if fault is None:
            return False
        if fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
            return False
        if fault.kind == "hang":
            await asyncio.sleep(FOREVER)
        if fault.kind == "drop":
            self._abort()
            await asyncio.sleep(FOREVER)
        await super().push(f"{fault.code} 4.3.2 fault relay: {fault} (scripted)")
        if fault.code == 421 and self.transport is not None:
            self.transport.close()
        return True

    def _abort(self) -> None:
        for transport in (self.transport, self._original_transport):
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]

    async def smtp_STARTTLS(self, arg: str) -> None:
        fault = self.relay._peek("tls")
        if fault is not None and fault.kind == "hang":
            self.relay._take("tls")
            await super().push("220 Ready to start TLS")
            await asyncio.sleep(FOREVER)  # the client's ClientHello is never read
        if await self._fault("tls"):
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._fault("ehlo"):
            await super().smtp_EHLO(hostname)

    async def smtp_AUTH(self, arg: str) -> None:
        if not await self._fault("auth"):
            await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._fault("mail"):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._fault("rcpt"):
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self._fault("data"):
            return
        alive = self.transport is not None and not self.transport.is_closing()
        fault = self.relay._take("body") if alive and self.envelope and self.envelope.rcpt_tos else None
        if fault is None:
            await super().smtp_DATA(arg)
            return
        await super().push("354 End data with <CR><LF>.<CR><LF>")
        if fault.kind == "drop":
            for _ in range(BODY_LINES_BEFORE_DROP):
                await self._reader.readuntil(b"\r\n")
            self._abort()
        await asyncio.sleep(FOREVER)


class FaultRelay(RelayStandin):
    """RelayStandin (same options, records, fixtures' helpers) with a script of faults."""

    protocol = _FaultSmtp
    hostname = "fault-relay.test"

    def __init__(self, *faults: Fault, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script: deque[Fault] = deque(faults)
        self._fired: list[Fault] = []
        self._script_lock = threading.Lock()

    def script(self, *faults: Fault) -> None:
        """Append faults to the script (from any thread)."""
        with self._script_lock:
            self._script.extend(faults)

    @property
    def fired(self) -> list[Fault]:
        with self._script_lock:
            return list(self._fired)

    @property
    def pending(self) -> list[Fault]:
        with self._script_lock:
            return list(self._script)

    def _peek(self, stage: str) -> Fault | None:
        with self._script_lock:
            return self._script[0] if self._script and self._script[0].stage == stage else None

    def _take(self, stage: str) -> Fault | None:
        with self._script_lock:
            if not self._script or self._script[0].stage != stage:
                return None
            fault = self._script.popleft()
            self._fired.append(fault)
            return fault

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        fault = (
            self._take("dot") if server.transport is not None and not server.transport.is_closing() else None
        )
        if fault is None:
            return await super().handle_DATA(server, session, envelope)
        if fault.kind == "stall":
            await asyncio.sleep(fault.seconds)  # cancelled, nothing kept, if the client leaves
            return await super().handle_DATA(server, session, envelope)
        if fault.kind == "hang":
            await asyncio.sleep(FOREVER)
        if fault.kind == "drop":
            await super().handle_DATA(server, session, envelope)  # received and kept...
            server._abort()  # ...and its 250 never leaves
            await asyncio.sleep(FOREVER)
        if fault.code == 421:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return f"{fault.code} 4.3.2 fault relay: {fault} (scripted)"
