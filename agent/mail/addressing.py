"""Addresses: RFC 5322 address-list parsing, aliases, local sender rewriting.

Pure and stdlib-only without `re` (the sendmail fast path imports it, and so does
the daemon's cleanup for SMTP submissions).
"""

from agent.errors import MessageError, UnknownRecipientError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the fast path cannot afford importing typing
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

MAX_ALIAS_DEPTH = 10
BARE = frozenset('<>,;:"(\\ \t')  # none of these: a lone addr-spec as it is (parse_address_list)
NAMED = frozenset(',;:"(\\')  # none of these and one <...> at the end: `Name <addr-spec>`


def local_names(hostname: str) -> frozenset[str]:
    """Domains that mean "this machine": name@one-of-these goes through [aliases]."""
    host = hostname.lower().rstrip(".")
    names = {"localhost", "localhost.localdomain", host, host.partition(".")[0]}
    return frozenset(n for n in names if n)


def parse_address_list(text: str) -> list[str]:
    """Bare addresses from a To/Cc/Bcc value or a recipient argument.

    Display names, comments and groups are dropped (`undisclosed-recipients:;` is
    empty). Raises MessageError for anything that cannot be parsed.
    """
    if any(c in text for c in "\r\n\0"):
        raise MessageError("address contains CR, LF or NUL")
    # the usual `a@b` and `Name <a@b>`: what _chunks and _mailbox would find, found directly
    if BARE.isdisjoint(text):
        return [_addr_spec(text, text)] if text.strip() else []
    if NAMED.isdisjoint(text) and text.count("<") == 1 and text.count(">") == 1:
        start, end = text.index("<"), text.index(">")
        spec = text[start + 1 : end]
        if start < end and not text[end + 1 :].strip(" \t") and " " not in spec and "\t" not in spec:
            return [_addr_spec(spec, text)]
    return [_mailbox(chunk) for chunk in _chunks(text) if chunk.strip()]


def parse_sender(text: str) -> str:
    """One envelope sender (`-f` value, MAIL FROM): "" and "<>" are the null sender."""
    if text.strip() in ("", "<>"):
        return ""
    addrs = parse_address_list(text)
    if len(addrs) != 1:
        raise MessageError(f"sender {_show(text)}: expected exactly one address")
    return addrs[0]


def _show(text: str) -> str:
    return repr(text[:80])


def _chunks(text: str) -> list[str]:
    """Split at top-level commas; group names (`name:`) and `;` are separators too."""
    chunks: list[str] = []
    begin = angle = 0
    marks, closed = _top_level(text, "<>,;:")
    for n in marks:
        c = text[n]
        if c == "<":
            angle += 1
        elif c == ">":
            angle -= 1
            if angle < 0:
                raise MessageError(f"address {_show(text)}: unbalanced >")
        elif angle:
            continue
        elif c == ":":
            begin = n + 1  # a group's display name
        else:
            chunks.append(text[begin:n])
            begin = n + 1
    if not closed or angle:
        raise MessageError(f"address {_show(text)}: unbalanced quote, comment or <")
    chunks.append(text[begin:])
    return chunks


def _top_level(text: str, stops: str) -> tuple[list[int], bool]:
    """Positions of `stops` characters outside quoted strings and (comments), and
    whether every quote, comment and escape was closed.

    A backslash escapes the next character outside quotes too, as Postfix's tokenizer
    reads it: `Doe\\, John <j@x>` is one mailbox, not `Doe\\` and `John <j@x>`.
    """
    if '"' not in text and "(" not in text and "\\" not in text:  # the usual address: no state to track
        return [n for n, c in enumerate(text) if c in stops], True
    marks: list[int] = []
    quoted = escaped = False
    depth = 0
    for n, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif c in stops:
            marks.append(n)
    return marks, not (quoted or depth or escaped)


def _mailbox(chunk: str) -> str:
    """`Name <a@b>`, `a@b (comment)` or `"quoted local"@b` -> the addr-spec."""
    marks = _top_level(chunk, "<>")[0]
    start = next((n for n in marks if chunk[n] == "<"), -1)
    if start >= 0:
        end = next((n for n in marks if n > start and chunk[n] == ">"), -1)
        if end < 0 or (chunk[end + 1 :].strip(" \t") and _strip_comments(chunk[end + 1 :]).strip()):
            raise MessageError(f"address {_show(chunk)}: text after >")
        spec = chunk[start + 1 : end]
        if ":" in spec and spec.lstrip().startswith("@"):
            spec = spec.partition(":")[2]  # obsolete source route: <@relay:user@host>
    else:
        spec = chunk
    return _addr_spec(_strip_comments(spec), chunk)


def _strip_comments(text: str) -> str:
    """Remove (comments) and folding whitespace outside quoted strings.

    Whitespace may only sit next to "@" or "." (obsolete `a . b @ c` syntax);
    between two words it would silently glue `john doe@x` into johndoe@x.
    """
    out: list[str] = []
    quoted = escaped = gap = False
    depth = 0
    for c in text:
        if depth:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            else:
                depth += {"(": 1, ")": -1}.get(c, 0)
            continue
        if not quoted and not escaped and c in " \t(":
            gap = True
            depth = 1 if c == "(" else 0
            continue
        if gap and out and out[-1] not in "@." and c not in "@.":
            raise MessageError(f"address {_show(text)}: unquoted space inside an address")
        gap = False
        out.append(c)
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
    return "".join(out)


def _addr_spec(spec: str, original: str) -> str:
    if not spec:
        raise MessageError(f"address {_show(original)}: empty address")
    local, at, domain = spec.rpartition("@")
    if not at:
        local, domain = spec, ""
    bad = "<>()[],;:\\" if not local.startswith('"') else ""
    if (at and (not local or not domain)) or any(c in bad for c in local.strip('"')):
        raise MessageError(f"address {_show(original)}: cannot parse")
    if any(c in '<>()[],;:\\"@ \t\ufffd' for c in domain) or domain.startswith(".") or ".." in domain:
        raise MessageError(f"address {_show(original)}: bad domain")
    if "\ufffd" in local or (local.startswith('"') and (len(local) < 2 or not local.endswith('"'))):
        raise MessageError(f"address {_show(original)}: cannot parse")
    return spec


def _split(addr: str) -> tuple[str, str]:
    local, at, domain = addr.rpartition("@")
    return (local, domain.lower()) if at else (addr, "")


def is_local(addr: str, names: "Collection[str]") -> bool:
    """A bare name, or name@localhost / @this-host."""
    _, domain = _split(addr)
    return not domain or domain.rstrip(".") in names


def resolve_recipient(
    addr: str, aliases: "Mapping[str, str]", names: "Collection[str]", _depth: int = 0
) -> list[str]:
    """A recipient after [aliases]: remote addresses pass through unchanged.

    A local one is looked up by its lower-cased local part (then without a
    +extension), then "default"; an alias value may list several addresses,
    comma-separated, and may itself name a local alias.
    """
    if not is_local(addr, names):
        return [addr]
    local = _split(addr)[0].strip('"').lower()
    target = aliases.get(local) or aliases.get(local.partition("+")[0]) or aliases.get("default")
    if not target:
        raise UnknownRecipientError(
            f"unknown local recipient {local}: add it to [aliases] (or set aliases.default)"
        )
    if _depth >= MAX_ALIAS_DEPTH:
        raise UnknownRecipientError(f"alias loop for local recipient {local}")
    out: list[str] = []
    for sub in parse_address_list(target):
        if is_local(sub, names) and _split(sub)[0].strip('"').lower() == local:
            raise UnknownRecipientError(f"alias {local} points at itself")
        out += resolve_recipient(sub, aliases, names, _depth + 1)
    return out


def resolve_all(addrs: list[str], aliases: "Mapping[str, str]", names: "Collection[str]") -> list[str]:
    """resolve_recipient over a list, duplicates dropped (first occurrence kept)."""
    seen: set[str] = set()
    out: list[str] = []
    for addr in addrs:
        for r in resolve_recipient(addr, aliases, names):
            key = r.lower()
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def rewrite_sender(
    addr: str, default_from: str, rewrite_local: bool, names: "Collection[str]", hostname: str
) -> str:
    """The envelope sender for mail from a local user.

    The null sender stays null. With rewrite_local, a local sender (bare name,
    @localhost, @this-host) becomes default_from, or name@FQDN when that is empty;
    without it, only a bare name is qualified (name@FQDN) so the relay can take it.
    """
    if not addr or not is_local(addr, names):
        return addr
    local, domain = _split(addr)
    if rewrite_local:
        return default_from or f"{local}@{hostname}"
    return addr if domain else f"{local}@{hostname}"
