"""`agent.mailq.main`, a name installed stubs import: kept so a stub written by an earlier version
still runs after an upgrade. The code is agent.submit.mailq."""

from agent.submit.mailq import main

__all__ = ["main"]
