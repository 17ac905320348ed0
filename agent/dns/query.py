"""TXT lookups through dnspython: the only DNS I/O of `dns check`.

NXDOMAIN and NODATA are answers (no record); a timeout, REFUSED or SERVFAIL
means DNS could not be asked at all, which is DnsError (exit 2).
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from agent.dns.result import Lookup
from agent.errors import AgentError, ConfigError

# A dead nameserver must give exit 2 quickly, not after dnspython's 5 s default.
LIFETIME = 3.0
ATTEMPT_TIMEOUT = 1.5


class DnsError(AgentError):
    """DNS could not be asked: timeout, refused, SERVFAIL, no resolver configured."""

    exit_code = 2


def parse_nameserver(spec: str) -> tuple[str, int]:
    """ "IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address -> (ip, port)."""
    host, port = spec.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"nameserver {spec!r}: expected IP or IP:PORT")
            port = rest[1:]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"nameserver {spec!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"nameserver {spec!r}: {port!r} is not a port")
    return host, int(port)


def make_resolver(nameserver: str = "") -> dns.resolver.Resolver:
    """A resolver for `nameserver` ("IP[:PORT]"), or the system's when empty."""
    if nameserver:
        ip, port = parse_nameserver(nameserver)
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [ip]
        res.port = port
    else:
        try:
            res = dns.resolver.Resolver(configure=True)
        except dns.exception.DNSException as exc:
            raise DnsError(f"no system resolver: {_reason(exc)}") from None
    res.timeout = ATTEMPT_TIMEOUT
    res.lifetime = LIFETIME
    return res


def txt(name: str, resolver: dns.resolver.Resolver) -> list[str]:
    """Each TXT record at `name`, its character-strings joined; [] when there is none."""
    try:
        qname = dns.name.from_text(name)
        answer = resolver.resolve(qname, dns.rdatatype.TXT, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return []  # no such name can exist, so it has no record
    except dns.exception.DNSException as exc:
        raise DnsError(f"DNS query for {name.rstrip('.')} failed: {_reason(exc)}") from None
    except OSError as exc:
        raise DnsError(f"DNS query for {name.rstrip('.')} failed: {exc.strerror or exc}") from None
    out = []
    for rdata in answer.rrset or ():
        strings: list[bytes] = list(rdata.strings)
        out.append(b"".join(strings).decode("utf-8", errors="replace"))
    return out


def make_lookup(nameserver: str = "") -> Lookup:
    """A memoizing `txt` for one run: SPF include chains ask for the same names again."""
    resolver = make_resolver(nameserver)
    cache: dict[str, list[str]] = {}

    def lookup(name: str) -> list[str]:
        key = name.lower().rstrip(".")
        if key not in cache:
            cache[key] = txt(key + ".", resolver)
        return list(cache[key])

    return lookup


def _reason(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout):
        return f"no answer within {LIFETIME:g} s"
    # NoNameservers' text lists every server and rcode; the first line is enough.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
