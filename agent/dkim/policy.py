"""Which configured DKIM domain signs a message: pure, stdlib-only.

Used by the daemon's cleanup and by the sendmail fast path (policy check while
the daemon is down), so it must stay import-free.
"""

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is dear on the sendmail fast path
if TYPE_CHECKING:
    from collections.abc import Iterable


def signing_domain(from_domain: str, key_domains: "Iterable[str]") -> str | None:
    """The exact From: domain if it has a key, else the nearest parent that has one.

    A parent's signature aligns under DMARC's relaxed mode, which is the default.
    """
    domains = {d.lower().rstrip(".") for d in key_domains}
    name = from_domain.lower().rstrip(".")
    while name:
        if name in domains:
            return name
        _, dot, name = name.partition(".")
        if not dot or "." not in name:
            # never fall back to a bare TLD
            return name if name in domains and "." in name else None
    return None


def unsigned_refusal(from_domain: str) -> str:
    return (
        f"no DKIM key for From: domain {from_domain or '(none)'}; "
        f"add one with `relay-agent dkim keygen --domain {from_domain or 'DOMAIN'} --selector S` "
        'and a [[dkim]] table, or set [policy] unsigned = "send"'
    )
