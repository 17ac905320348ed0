from __future__ import annotations

from tests.support.relay_standin import relay_standin, relay_standin_factory

__all__ = ["relay_standin", "relay_standin_factory"]
