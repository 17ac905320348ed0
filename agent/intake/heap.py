"""The daemon's memory given back to the system after a big message (glibc's malloc; else no-ops).

Importing this pins glibc's mmap threshold: glibc raises it (up to 32 MB) each time a block
that big is freed, and from then on big blocks come from the heap, which it rarely gives back.
A daemon that had made one big message safe in memory (agent.intake.cleanup's fallback) stayed tens
of MB larger. Pinned, a block of MMAP_THRESHOLD bytes or more has a mapping of its own and goes
back to the system when freed; smaller ones (a stream's chunks) are reused as before.
"""

from __future__ import annotations

from typing import Any

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _glibc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()
_malloc_trim = getattr(_LIBC, "malloc_trim", None)


def give_back_memory() -> None:
    """Hand the heap's free pages back to the system (malloc_trim).

    Re-encoding a big message whole leaves tens of MB of freed lines in its thread's heap, which
    glibc keeps for reuse: without this the daemon stayed that much larger afterwards.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _pin_mmap_threshold() -> None:
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_pin_mmap_threshold()
