"""The DATA payload of a relay transaction: the message dot-stuffed a chunk at a time, then ".".

Each chunk is handed to the transport only once it has taken the previous one (its write buffer
drained below the high-water mark), so a connection holds a few chunks whatever the size of
the message. A small message, read whole, goes out in a single write with the final ".".
"""

from __future__ import annotations

from agent.mail.dot_stream import DotStuffer
from agent.mail.smtp_text import dot_stuff
from agent.queue.message_source import MessageSource
from agent.relay.link import RelayLink


async def send_body(link: RelayLink, message: MessageSource) -> None:
    """Inside a "data" stage: every failure becomes the stage's RelayError."""
    if message.data is not None:  # small, in memory anyway: one stuffed copy, one write
        link.write(dot_stuff(message.data))
        return
    stuffer = DotStuffer()
    pending = b""
    for chunk in message.chunks():
        if pending:
            link.write(pending)
            await link.drain()
        pending = stuffer.feed(chunk)
    link.write(pending + stuffer.end())
