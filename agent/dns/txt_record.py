"""TXT record values: RFC 6376 tag lists in (DKIM, and DMARC's records), zone-file lines out."""

from __future__ import annotations

TXT_CHUNK = 255


def zone_txt(name: str, value: str) -> str:
    """One zone-file line publishing `value`, split into quoted strings of <= 255 characters."""
    chunks = [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"{name.rstrip('.')}. IN TXT {quoted}"


def parse_tags(record: str) -> list[tuple[str, str]] | None:
    """An RFC 6376 3.2 tag list; None if malformed (no '=' or a tag twice)."""
    tags: list[tuple[str, str]] = []
    for part in record.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or name.strip() in (n for n, _ in tags):
            return None
        tags.append((name.strip(), value.strip()))
    return tags
