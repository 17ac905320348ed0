"""`agent.sendmail.main`, a name installed stubs import: kept so a stub written by an earlier version
still runs after an upgrade. The code is agent.submit.sendmail."""

from agent.submit.sendmail import main

__all__ = ["main"]
