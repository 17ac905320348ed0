"""`agent.fastload.refresh`, a name installed stubs import: kept so a stub written by an earlier version
still runs after an upgrade. The code is agent.submit.bytecode_bundle."""

from agent.submit.bytecode_bundle import refresh

__all__ = ["refresh"]
