"""`sendmail`: the drop-in entry point cron, PHP and friends spawn once per message.

Startup time is the product here (budget: 20 ms), so this module and all it
imports on the normal path stay on cheap builtins: no re, json, tomllib, socket,
email, asyncio, typing or dataclasses. The config comes from a pre-digested
marshal file (agent.submit.config_cache); TOML is parsed only when that is stale.
"""

import sys

from agent.errors import EX_TEMPFAIL, AgentError, TempError, TooBigError
from agent.submit.args import Options, parse
from agent.submit.submission import Runtime, deliver, envelope_sender, load_runtime, normalize, prepare

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs more than sendmail's own work
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

# A message is held as a list of CRLF parts, the first holding all its header fields (which
# headers' functions then read and edit as if it were the whole message). Up to CHUNK it is
# one part, read and made CRLF whole; a bigger one is read, made CRLF and split a chunk at a
# time (agent.submit.stdin_message, imported only then), so it is never held twice.
CHUNK = 1 << 16


def read_message(stream: "BinaryIO | None", ignore_dots: bool, limit: int) -> list[bytes]:
    """stdin up to EOF, or (without -i) up to a line holding a lone ".", made CRLF (normalize)."""
    rest = pieces(stream, ignore_dots, limit) if stream is not None else iter(())
    first = next(rest, b"")
    if len(first) >= CHUNK:  # a full first piece: more may follow
        from agent.submit import stdin_message

        return stdin_message.read_rest(first, rest, limit)
    if len(first) > limit:
        raise TooBigError(f"message exceeds the size limit of {limit} bytes (limits.max_message_size)")
    return [normalize(first)]


def pieces(stream: "BinaryIO", ignore_dots: bool, limit: int) -> "Iterator[bytes]":
    """stdin in pieces of CHUNK bytes or more (the last may be short): up to EOF, or (without
    -i) up to a line holding a lone "."; reading stops once past `limit`. Nothing is read
    ahead of what is handed out, so a caller may stop after any piece."""
    size = 0
    if ignore_dots:
        while size <= limit and (chunk := stream.read(min(CHUNK, limit + 1 - size))):
            size += len(chunk)
            yield chunk
        return
    lines: list[bytes] = []
    held = 0
    while size <= limit:
        line = stream.readline(limit + 2 - size)
        if not line or line in (b".\n", b".\r\n", b"."):
            break
        lines.append(line)
        size += len(line)
        held += len(line)
        if held >= CHUNK:
            yield b"".join(lines)
            lines, held = [], 0
    yield b"".join(lines)


def send(opts: Options, rt: Runtime, stream: "BinaryIO | None") -> int:
    message = read_message(stream, opts.ignore_dots, rt.max_message_size)
    sender = envelope_sender(rt, opts.sender)
    rcpts = prepare(rt, message, sender, list(opts.recipients), opts.full_name, opts.extract)
    deliver(rt, sender, rcpts, message, opts.dsn())
    return 0


def flush(rt: Runtime) -> int:
    from agent.submit import socket_client

    try:
        reply = socket_client.flush(rt.socket, rt.hostname)
    except socket_client.Unavailable:
        raise TempError(f"the relay-agent daemon is not running ({rt.socket}); queue not flushed") from None
    if reply.code // 100 != 2:
        raise socket_client.error_for_reply(reply)
    return 0


def run(argv: list[str], prog: str) -> int:
    opts = parse(argv, prog)
    if opts.mode == "list":
        import importlib

        mailq_args = list(opts.recipients) + (["--config", opts.config] if opts.config else [])
        return int(importlib.import_module("agent.submit.mailq").main(mailq_args))
    if opts.mode == "newaliases":
        return 0
    rt = load_runtime(opts.config)
    if opts.mode == "flush":
        return flush(rt)
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    if opts.mode == "smtp":
        import gc

        gc.enable()  # the stub turned it off for one message; a session may carry thousands
        from agent.submit.smtp_stdio import serve

        return serve(rt, opts, stdin, sys.stdout.buffer)
    return send(opts, rt, stdin)


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point; every failure is one `sendmail: reason` line on stderr and a sysexit."""
    if argv is None:
        argv = sys.argv[1:]
    if prog is None:
        prog = sys.argv[0] if sys.argv else "sendmail"
    try:
        return run(argv, prog)
    except AgentError as exc:
        code, reason = exc.exit_code, exc.message
    except KeyboardInterrupt:
        code, reason = EX_TEMPFAIL, "interrupted; the message was not queued"
    except Exception as exc:  # never lose mail silently: a temporary failure makes the caller retry
        code, reason = EX_TEMPFAIL, f"internal error, message not queued: {type(exc).__name__}: {exc}"
    try:
        sys.stderr.write(f"sendmail: {one_line(reason)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
