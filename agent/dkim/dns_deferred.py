"""Keep dnspython out of the daemon: dkimpy imports it at import time (dkim.dnsplug,
for verifying), several MB of RSS against the 60 MB budget, while signing looks nothing up.

`defer()` puts a stand-in for dkim.dnsplug in sys.modules before dkim is imported; its
get_txt imports the real module on first use, so a verifier in the same process still
works, only later.
"""

import importlib
import sys
import types


def _get_txt(name: bytes, timeout: int = 5) -> bytes | None:
    sys.modules.pop("dkim.dnsplug", None)
    real = importlib.import_module("dkim.dnsplug")
    result: bytes | None = real.get_txt(name, timeout)
    return result


def defer() -> None:
    if "dkim" in sys.modules or "dkim.dnsplug" in sys.modules:
        return  # too late, or already done: nothing to save
    stand_in = types.ModuleType("dkim.dnsplug")
    stand_in.get_txt = _get_txt  # type: ignore[attr-defined]
    sys.modules["dkim.dnsplug"] = stand_in
