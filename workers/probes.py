"""Probes: the HTTP endpoints Kubernetes and Prometheus ask a long-running process.

- ``/healthz``: liveness, 200 while the process serves requests at all. Nothing a restart cannot fix
  belongs here: a pod restarted for a poison event only meets it again.
- ``/readyz``: readiness, 200 or 503 from the process's own verdict, with its JSON document.
- ``/metrics``: the Prometheus exposition of the process.

The worker (``tidings worker``) and the relay (``tidings relay --port``) serve the same three paths, so
one probe spec in the Helm chart fits both.

Example::

    probes = Probes(lambda: (True, {"ready": True}), host="0.0.0.0", port=8000)
    probes.start()
    ...
    probes.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from eventstore.errors import ConfigurationError

__all__ = ["Probes", "Readiness"]

log = logging.getLogger("workers.probes")

Readiness = Callable[[], tuple[bool, dict[str, Any]]]
"""Whether the process is ready, and the JSON document ``/readyz`` returns."""


class Probes:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` from a background thread.

    ``port`` 0 picks a free port (read ``port`` once started).
    """

    def __init__(self, readiness: Readiness, *, host: str, port: int) -> None:
        self.readiness = readiness
        self._address = (host, port)
        self._server: _ProbeServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen and serve.

        Raises:
            ConfigurationError: the address cannot be listened on (the port is taken, say).
        """
        host, port = self._address
        try:
            self._server = _ProbeServer((host, port), self.readiness)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host or '*'}:{port}: {exc.strerror}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="probes", daemon=True
        )
        self._thread.start()
        log.info("serving /healthz, /readyz and /metrics", extra={"host": host, "port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        """The port listened on (the one picked when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the probes are not started")
        return int(self._server.server_address[1])


class _ProbeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], readiness: Readiness) -> None:
        self.readiness = readiness
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _ProbeServer

    def do_GET(self) -> None:
        match urlsplit(self.path).path:
            case "/healthz":
                self._send(200, "application/json", b'{"alive": true}')
            case "/readyz":
                ready, document = self.server.readiness()
                self._send(200 if ready else 503, "application/json", json.dumps(document).encode())
            case "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            case _:
                self._send(404, "text/plain", b"not found: /healthz, /readyz, /metrics\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)
