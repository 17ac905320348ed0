"""The TLS context for relay connections, and one shared per CA file.

Verification is always on (certificate and host name); credentials are never sent before TLS.
"""

from __future__ import annotations

import functools
import os
import ssl

from agent.errors import ConfigError


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Verification is always on (certificate and host name); there is deliberately no switch."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@functools.lru_cache(maxsize=4)
def _shared_context(ca_file: str, ca_mtime_ns: int) -> ssl.SSLContext:
    return tls_context(ca_file)


def shared_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """One context per CA file (version): parsing the system CA store for every
    connection attempt costs CPU and, through malloc fragmentation, megabytes of RSS."""
    try:
        mtime = os.stat(ca_file).st_mtime_ns if ca_file else 0
    except OSError:
        mtime = -1  # let load_verify_locations report the error
    if mtime == -1:
        return tls_context(ca_file)
    return _shared_context(ca_file, mtime)


def check_ca_file(ca_file: str) -> None:
    """Build the context the daemon would build; ConfigError naming relay.ca_file if it cannot."""
    if not ca_file:
        return
    try:
        tls_context(ca_file)
    except ssl.SSLError as exc:  # an OSError too: first
        reason = exc.reason or str(exc).splitlines()[0]
        raise ConfigError(f"relay.ca_file {ca_file}: no usable CA certificate in it ({reason})") from None
    except OSError as exc:
        raise ConfigError(f"relay.ca_file {ca_file}: cannot read: {exc.strerror or exc}") from None
