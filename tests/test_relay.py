"""agent.relay.connection against the real relay stand-in (aiosmtpd over TCP with STARTTLS and AUTH)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import Envelope, Session

from agent.config import RelayConfig
from agent.mail.smtp_text import dot_stuff, xtext
from agent.relay.connection import RcptResult, RelayConnection, RelayError, TxResult, dsn_mail_options
from agent.relay.reply_reader import Replies
from tests.support.relay_standin import DEFAULT_PASSWORD, DEFAULT_USER, RelayStandin

pytestmark = pytest.mark.timeout(60)

MSG = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n\r\nHello.\r\n.leading dot\r\n"


def relay_cfg(relay: RelayStandin, **over: Any) -> RelayConfig:
    settings = relay.relay_settings()
    settings.update(over)
    return RelayConfig(**settings)


async def connect(relay: RelayStandin, password: str | None = None, **over: Any) -> RelayConnection:
    conn = RelayConnection(relay_cfg(relay, **over), password or relay.password, "client.test")
    await conn.connect()
    return conn


@pytest.fixture(params=[True, False], ids=["pipelined", "one-by-one"])
def relay_standin(request: pytest.FixtureRequest) -> Iterator[RelayStandin]:
    """Every transaction test runs against a relay with and without PIPELINING (two code paths)."""
    with RelayStandin(pipelining=request.param) as relay:
        yield relay


@pytest.fixture
async def conn(relay_standin: RelayStandin) -> AsyncIterator[RelayConnection]:
    c = await connect(relay_standin)
    yield c
    await c.close()


def outcomes(tx: TxResult) -> dict[str, str]:
    return {r.address: r.outcome for r in tx.results}


async def test_delivery_over_starttls_with_auth(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    tx = await conn.send("a@example.com", ["b@example.net"], MSG)
    assert tx.results == (RcptResult("b@example.net", "sent", tx.results[0].reply),)
    assert tx.results[0].reply.startswith("250 2.0.0 Ok")
    assert tx.relay == f"127.0.0.1[127.0.0.1]:{relay_standin.port}"
    [got] = relay_standin.wait_for(1)
    assert got.tls and got.auth_user == relay_standin.username
    assert got.data == MSG and got.mail_from == "a@example.com" and got.rcpt_tos == ("b@example.net",)
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_null_sender_for_bounces(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    tx = await conn.send("", ["b@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "sent"}
    [got] = relay_standin.wait_for(1)
    assert got.mail_from == "" and got.rcpt_tos == ("b@example.net",)


async def test_cancelled_send_leaves_connection_unusable(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.stall_next(5, stage="rcpt")
    task = asyncio.create_task(conn.send("a@example.com", ["b@example.net"], MSG))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not conn.usable


async def test_connection_reused_for_50_messages(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    for i in range(50):
        tx = await conn.send("a@example.com", [f"r{i}@example.net"], MSG)
        assert outcomes(tx) == {f"r{i}@example.net": "sent"}
    assert len(relay_standin.wait_for(50)) == 50
    assert relay_standin.connections == 1 and conn.usable


async def test_4xx_at_mail_is_temporary_and_connection_stays(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.fail_next(451, "4.3.0 busy", stage="mail")
    tx = await conn.send("a@example.com", ["b@example.net", "c@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "temp", "c@example.net": "temp"}
    assert tx.results[0].reply == "451 4.3.0 busy"
    assert conn.usable
    tx = await conn.send("a@example.com", ["b@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "sent"}


async def test_5xx_at_mail_is_permanent_for_all(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    relay_standin.fail_next(553, "5.7.1 sender not allowed", stage="mail")
    tx = await conn.send("a@example.com", ["b@example.net", "c@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "perm", "c@example.net": "perm"}
    assert relay_standin.messages == []


async def test_one_rcpt_refused_others_delivered_once(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.reject_rcpt("bad@example.net", 550, "5.1.1 no such user")
    rcpts = ["b@example.net", "bad@example.net", "c@example.net"]
    tx = await conn.send("a@example.com", rcpts, MSG)
    assert outcomes(tx) == {"b@example.net": "sent", "bad@example.net": "perm", "c@example.net": "sent"}
    bad = next(r for r in tx.results if r.address == "bad@example.net")
    assert bad.reply == "550 5.1.1 no such user"
    [got] = relay_standin.wait_for(1)
    assert got.rcpt_tos == ("b@example.net", "c@example.net")
    await asyncio.sleep(0.1)
    assert len(relay_standin.messages) == 1


async def test_4xx_rcpt_is_temporary(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    relay_standin.reject_rcpt("later@example.net", 452, "4.2.2 mailbox full")
    tx = await conn.send("a@example.com", ["later@example.net", "b@example.net"], MSG)
    assert outcomes(tx) == {"later@example.net": "temp", "b@example.net": "sent"}


async def test_all_rcpts_refused_no_data_and_connection_reusable(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.fail_next(550, "5.1.1 nope", stage="rcpt", count=2)
    tx = await conn.send("a@example.com", ["x@example.net", "y@example.net"], MSG)
    assert outcomes(tx) == {"x@example.net": "perm", "y@example.net": "perm"}
    assert relay_standin.messages == []
    tx = await conn.send("a@example.com", ["z@example.net"], MSG)  # after RSET: a fresh transaction works
    assert outcomes(tx) == {"z@example.net": "sent"}
    assert relay_standin.connections == 1


@pytest.mark.parametrize(("code", "outcome"), [(554, "perm"), (451, "temp")])
async def test_final_dot_reply(
    relay_standin: RelayStandin, conn: RelayConnection, code: int, outcome: str
) -> None:
    relay_standin.fail_next(code, stage="data")
    relay_standin.reject_rcpt("bad@example.net")
    tx = await conn.send("a@example.com", ["b@example.net", "bad@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": outcome, "bad@example.net": "perm"}
    assert relay_standin.messages == [] and conn.usable


async def test_421_is_connection_level(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    relay_standin.fail_next(421, "4.4.2 closing", stage="rcpt")
    with pytest.raises(RelayError) as err:
        await conn.send("a@example.com", ["b@example.net"], MSG)
    assert err.value.stage == "rcpt" and err.value.reply.startswith("421")
    assert not conn.usable


async def test_drop_during_data_raises(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    relay_standin.drop_next(stage="data")
    with pytest.raises(RelayError) as err:
        await conn.send("a@example.com", ["b@example.net"], MSG)
    assert err.value.stage == "data" and not conn.usable


async def test_relay_down_is_connect_error(relay_standin: RelayStandin) -> None:
    relay_standin.down()
    with pytest.raises(RelayError) as err:
        await connect(relay_standin)
    assert err.value.stage == "connect"
    assert "refused" in err.value.reply.lower()
    relay_standin.up()
    c = await connect(relay_standin)
    assert outcomes(await c.send("a@example.com", ["b@example.net"], MSG)) == {"b@example.net": "sent"}
    await c.close()


async def test_idle_connection_cut_is_reuse_error_without_before_mail(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.down()
    await asyncio.sleep(0.1)
    called = []

    async def before() -> None:
        called.append(1)

    with pytest.raises(RelayError) as err:
        await conn.send("a@example.com", ["b@example.net"], MSG, before_mail=before)
    assert err.value.stage == "reuse" and called == []
    assert not conn.usable


async def test_wrong_password_is_temporary_auth_error(relay_standin: RelayStandin) -> None:
    password = "wrong-Pa55word-xyz"
    with pytest.raises(RelayError) as err:
        await connect(relay_standin, password=password)
    assert err.value.stage == "auth" and err.value.reply.startswith("535")
    assert err.value.exit_code == 75
    assert password not in str(err.value)
    assert relay_standin.auth_attempts == 1  # one mechanism, one try: no lockout trigger


async def test_no_password_is_auth_error_before_any_attempt(relay_standin: RelayStandin) -> None:
    c = RelayConnection(relay_cfg(relay_standin), None, "client.test")
    with pytest.raises(RelayError) as err:
        await c.connect()
    assert err.value.stage == "auth" and relay_standin.auth_attempts == 0


async def test_stalled_relay_times_out(relay_standin: RelayStandin) -> None:
    c = await connect(relay_standin, timeout=0.5)
    relay_standin.stall_next(5, stage="mail")
    t0 = time.monotonic()
    with pytest.raises(RelayError) as err:
        await c.send("a@example.com", ["b@example.net"], MSG)
    assert time.monotonic() - t0 < 3
    assert err.value.stage == "mail" and "timed out" in err.value.reply
    assert not c.usable


async def test_data_timeout_governs_final_dot(relay_standin: RelayStandin) -> None:
    # Commands time out after 0.3 s, but the relay may take 1 s to accept the message.
    c = await connect(relay_standin, timeout=0.3, data_timeout=5)
    relay_standin.stall_next(1.0, stage="data")
    tx = await c.send("a@example.com", ["b@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "sent"}
    relay_standin.stall_next(3.0, stage="data")
    c2 = await connect(relay_standin, timeout=5, data_timeout=0.5)
    with pytest.raises(RelayError) as err:
        await c2.send("a@example.com", ["b@example.net"], MSG)
    assert err.value.stage == "data"
    await c.close()


async def test_dsn_parameters_when_offered(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    dsn = {"ret": "hdrs", "envid": "Q1 x=y", "notify": "failure,delay"}
    await conn.send("a@example.com", ["b@example.net"], MSG, dsn=dsn)
    [got] = relay_standin.wait_for(1)
    assert "RET=HDRS" in got.mail_options and "ENVID=Q1+20x+3Dy" in got.mail_options
    assert got.rcpt_options == (("NOTIFY=FAILURE,DELAY",),)


async def test_dsn_parameters_omitted_when_not_offered(
    relay_standin_factory: Callable[..., RelayStandin],
) -> None:
    relay = relay_standin_factory(dsn=False)
    c = await connect(relay)
    tx = await c.send("a@example.com", ["b@example.net"], MSG, dsn={"ret": "FULL", "notify": "NEVER"})
    assert outcomes(tx) == {"b@example.net": "sent"}
    [got] = relay.wait_for(1)
    assert not any(o.upper().startswith(("RET", "ENVID")) for o in got.mail_options)
    assert got.rcpt_options == ((),)
    await c.close()


async def test_8bit_and_smtputf8_only_when_needed(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    await conn.send("a@example.com", ["b@example.net"], MSG)
    body8 = "From: a@example.com\r\nSubject: x\r\n\r\nHej då\r\n".encode()
    await conn.send("a@example.com", ["b@example.net"], body8)
    await conn.send("a@example.com", ["rå@example.net"], MSG)
    plain, eight, utf8 = relay_standin.wait_for(3)
    assert [o.upper() for o in plain.mail_options] == [f"SIZE={len(MSG)}"]
    assert "BODY=8BITMIME" in eight.mail_options and "SMTPUTF8" not in eight.mail_options
    assert eight.data == body8
    assert "SMTPUTF8" in utf8.mail_options and utf8.rcpt_tos == ("rå@example.net",)


async def test_before_mail_awaited_once_right_before_mail(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    stamps: list[float] = []

    async def before() -> None:
        await asyncio.sleep(0.05)
        stamps.append(time.monotonic())

    for _ in range(3):
        await conn.send("a@example.com", ["b@example.net"], MSG, before_mail=before)
    relay_standin.wait_for(3)
    mails = relay_standin.mail_from_times
    assert len(stamps) == 3 and len(mails) == 3
    for called, mail in zip(stamps, mails, strict=True):
        assert 0 <= mail - called < 0.05


def test_xtext_and_dsn_option_sanitising() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert dsn_mail_options({"ret": "bogus", "envid": "ok"}) == ["ENVID=ok"]


def test_standin_cli_prints_one_json_line_per_message(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.relay_standin", "--port", "0", "--ca-out", str(ca)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        info = json.loads(proc.stderr.readline())
        port = int(info["listening"].rsplit(":", 1)[1])
        cfg = RelayConfig(host="localhost", port=port, username=DEFAULT_USER, ca_file=str(ca), timeout=10)

        async def send() -> TxResult:
            c = RelayConnection(cfg, DEFAULT_PASSWORD, "client.test")
            await c.connect()
            tx = await c.send("a@example.com", ["b@example.net"], MSG)
            await c.close()
            return tx

        assert outcomes(asyncio.run(send())) == {"b@example.net": "sent"}
        line = json.loads(proc.stdout.readline())
        assert line["mail_from"] == "a@example.com" and line["rcpt_tos"] == ["b@example.net"]
        assert line["tls"] is True and line["auth_user"] == DEFAULT_USER and line["data"] == MSG.decode()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# ----- pipelining (RFC 2920) -----


class TurnCounter:
    """A TCP pump between client and relay counting the client's turns: runs of client-to-relay
    bytes with relay-to-client bytes between them. Each round trip costs one turn."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.turns = 0
        self._last = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        relay_r, relay_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, relay_w]
        for args in ((client_r, relay_w, "client"), (relay_r, client_w, "relay")):
            task = asyncio.create_task(self._pump(*args))
            self._tasks.add(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if side == "client" and self._last != "client":
                    self.turns += 1
                self._last = side
                writer.write(data)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()


@pytest.mark.parametrize(("pipelining", "turns"), [(True, 2), (False, 8)])
async def test_pipelined_transaction_is_two_round_trips(
    relay_standin_factory: Callable[..., RelayStandin], pipelining: bool, turns: int
) -> None:
    relay = relay_standin_factory(pipelining=pipelining)
    proxy = TurnCounter(relay.port)
    c = await connect(relay, port=await proxy.start())
    try:
        rcpts = [f"r{i}@example.net" for i in range(5)]
        for _ in range(3):
            proxy.turns = 0
            tx = await c.send("a@example.com", rcpts, MSG)
            assert outcomes(tx) == dict.fromkeys(rcpts, "sent")
            # MAIL + 5 RCPT + DATA in one write, the body in a second; one by one: 1 + 5 + 1 + 1.
            assert proxy.turns == turns
        assert [m.rcpt_tos for m in relay.wait_for(3)] == [tuple(rcpts)] * 3
        assert all(m.data == MSG for m in relay.messages)
    finally:
        await c.close()
        await proxy.stop()


class ThreeFiftyFourAnyway(RelayStandin):
    """A relay that refuses every recipient yet answers DATA with 354 (some filters do)."""

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)  # so aiosmtpd opens DATA
        return "550 5.1.1 refused after all"


async def test_354_without_accepted_recipients_ends_an_empty_message_then_rset() -> None:
    with ThreeFiftyFourAnyway() as relay:
        c = await connect(relay)
        try:
            tx = await c.send("a@example.com", ["x@example.net", "y@example.net"], MSG)
            assert outcomes(tx) == {"x@example.net": "perm", "y@example.net": "perm"}
            assert tx.results[0].reply == "550 5.1.1 refused after all"
            [empty] = relay.wait_for(1)
            assert empty.data == b""  # none of the message went out, only the terminating "."
            assert c.usable
            tx = await c.send("a@example.com", ["z@example.net"], MSG)
            assert outcomes(tx) == {"z@example.net": "perm"}
            assert len(relay.wait_for(2)) == 2 and relay.connections == 1
        finally:
            await c.close()


async def test_421_to_final_dot_is_connection_level(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.fail_next(421, "4.4.2 shutting down", stage="data")
    with pytest.raises(RelayError) as err:
        await conn.send("a@example.com", ["b@example.net", "c@example.net"], MSG)
    assert err.value.stage == "data" and err.value.reply == "421 4.4.2 shutting down"
    assert not conn.usable and relay_standin.messages == []


async def test_drop_after_rcpt_raises(relay_standin: RelayStandin, conn: RelayConnection) -> None:
    relay_standin.drop_next(stage="rcpt")
    with pytest.raises(RelayError) as err:
        await conn.send("a@example.com", ["b@example.net", "c@example.net"], MSG)
    assert err.value.stage == "rcpt" and not conn.usable


async def test_mail_refused_many_rcpts_then_next_transaction_is_clean(
    relay_standin: RelayStandin, conn: RelayConnection
) -> None:
    relay_standin.fail_next(553, "5.7.1 sender not allowed", stage="mail")
    rcpts = [f"r{i}@example.net" for i in range(4)]
    tx = await conn.send("a@example.com", rcpts, MSG)
    assert outcomes(tx) == dict.fromkeys(rcpts, "perm")
    assert {r.reply for r in tx.results} == {"553 5.7.1 sender not allowed"}
    tx = await conn.send("a@example.com", ["b@example.net"], MSG)
    assert outcomes(tx) == {"b@example.net": "sent"}
    [got] = relay_standin.wait_for(1)
    assert got.rcpt_tos == ("b@example.net",)


@pytest.mark.parametrize(
    "message",
    [b".starts with a dot\r\n..two\r\nend\r\n", b"Subject: x\r\n\r\nno final line break", b"x\r\n.\r\n"],
)
async def test_dot_stuffing_round_trips(
    relay_standin: RelayStandin, conn: RelayConnection, message: bytes
) -> None:
    tx = await conn.send("a@example.com", ["b@example.net"], message)
    assert outcomes(tx) == {"b@example.net": "sent"}
    [got] = relay_standin.wait_for(1)
    assert got.data == message if message.endswith(b"\r\n") else message + b"\r\n"


def test_dot_stuff_payload() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no end") == b"no end\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


async def test_reply_parser_handles_any_split_and_multiline() -> None:
    stream = b"250 2.1.0 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go ahead\r\n"
    for cut in range(1, len(stream)):
        replies = Replies(asyncio.Protocol())
        replies.start()
        replies.data_received(stream[:cut])
        replies.data_received(stream[cut:])
        got = [await replies.read(1) for _ in range(3)]
        assert [(r.code, r.message) for r in got] == [
            (250, "2.1.0 Ok"),
            (550, "5.1.1 no such\n5.1.1 user"),
            (354, "go ahead"),
        ]


async def test_reply_parser_errors() -> None:
    replies = Replies(asyncio.Protocol())
    replies.start()
    replies.data_received(b"250 Ok\r\nhello\r\n")
    assert (await replies.read(1)).code == 250
    with pytest.raises(aiosmtplib.SMTPResponseException, match="malformed"):
        await replies.read(1)
    quiet = Replies(asyncio.Protocol())
    quiet.start()
    with pytest.raises(TimeoutError):
        await quiet.read(0.05)
    quiet.connection_lost(None)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await quiet.read(1)


async def test_writing_after_the_relay_closed_is_a_relay_error_in_that_stage(
    relay_standin: RelayStandin,
) -> None:
    """The relay may close the connection together with its last reply (before our RSET, say):
    the next write must fail as a RelayError of its stage, never as an AttributeError."""
    from agent.relay.link import RelayLink

    link = RelayLink(RelayConfig(host="127.0.0.1", port=relay_standin.port), None)
    link.smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay_standin.port)  # never connected
    with pytest.raises(RelayError) as info:
        async with link.stage("rset"):
            link.write(b"RSET\r\n")
    assert info.value.stage == "rset" and "closed" in info.value.reply and not link.usable
