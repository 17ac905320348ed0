"""SMTP and header text helpers: pure, stdlib-only (the sendmail fast path imports this)."""


def clean_line(text: str) -> str:
    """One line of text, safe to store in a line-oriented file or a log."""
    return " ".join(text.replace("\0", " ").split())


def dot_stuff(message: bytes) -> bytes:
    """DATA payload for a CRLF message, including the terminating ".\r\n"."""
    body = message.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def xtext(value: str) -> str:
    """RFC 3461 xtext (for ENVID): octets outside "!".."~", and "+" and "=", as +XX."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode()) for c in value
    )
