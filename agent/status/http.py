"""The [metrics] listener: /metrics (prometheus-client's WSGI app), /healthz and /readyz.

It runs in its own thread, so a scrape or a probe never waits for the event loop, and a stuck loop
shows as /healthz 503 (its heartbeat stops) instead of as a probe that hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from agent.status.health import Health
from agent.status.metrics import Metrics

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would flood the journal


def app(metrics: Metrics, health: Health) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    scrape = make_wsgi_app(metrics.registry)

    def route(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            why = health.alive() if path == "/healthz" else (health.alive() or health.ready())
            status = "503 Service Unavailable" if why else "200 OK"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why or 'ok'}\n".encode()]
        if path == "/metrics":
            body: Iterable[bytes] = scrape(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return route


def start(listen: str, metrics: Metrics, health: Health) -> WSGIServer:
    """Serve on `listen` ("HOST:PORT") in a daemon thread; the caller shuts it down."""
    host, _, port = listen.rpartition(":")
    server = make_server(
        host.strip("[]"), int(port), app(metrics, health), server_class=_Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="relay-agent-metrics", daemon=True).start()
    return server
