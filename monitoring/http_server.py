"""The one HTTP port every service exposes: ``/healthz``, ``/readyz`` and ``/metrics``.

Liveness says the process loop is turning (a hung loop stops refreshing its
heartbeat and the supervisor restarts it); readiness says the service can do its
job right now (partitions assigned, registry reachable) and carries the reasons
when it cannot, so an operator reading ``curl /readyz`` learns what to fix.
The server runs in a daemon thread and never touches the service's own state
except through the callables it is given.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "HealthState", "StallWatch"]


@dataclass
class HealthState:
    """Liveness and readiness as the service reports them.

    The service calls :meth:`beat` from its main loop and :meth:`set_not_ready`
    / :meth:`set_ready` as conditions change; the HTTP handler only reads.
    """

    liveness_timeout_s: float = 120.0
    _last_beat: float = field(default_factory=time.monotonic)
    _not_ready: dict[str, str] = field(default_factory=lambda: {"starting": "service is starting"})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def beat(self) -> None:
        """Record that the main loop is alive."""
        self._last_beat = time.monotonic()

    def set_not_ready(self, reason_key: str, message: str) -> None:
        """Mark the service not ready for ``reason_key`` (e.g. ``registry``) with a message for operators."""
        with self._lock:
            self._not_ready[reason_key] = message

    def set_ready(self, reason_key: str | None = None) -> None:
        """Clear one reason, or all of them when ``reason_key`` is None."""
        with self._lock:
            if reason_key is None:
                self._not_ready.clear()
            else:
                self._not_ready.pop(reason_key, None)

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Return liveness and a body describing it."""
        age = time.monotonic() - self._last_beat
        return age <= self.liveness_timeout_s, {"last_loop_seconds_ago": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Return readiness and the reasons it is missing, if any."""
        with self._lock:
            reasons = dict(self._not_ready)
        return not reasons, {"not_ready": reasons}


class StallWatch:
    """Liveness and the ``stalled`` readiness reason kept true to the progress a service makes.

    A loop that turns without progress (retrying, or polling partitions it never
    fetches) must not look healthy. The service calls :meth:`progress` when it made
    some (committed, or has nothing left to do): that beats liveness and ends a stall.
    While work waits it calls :meth:`check`; once ``limit_s`` passed since the last
    progress, readiness gets the ``stalled`` reason, once per stall.

    Parameters
    ----------
    health
        The state ``/healthz`` and ``/readyz`` read.
    limit_s
        Seconds without progress while work waits before readiness reports the stall.
    """

    def __init__(self, health: HealthState, limit_s: float) -> None:
        self.health = health
        self.limit_s = limit_s
        self._last_progress = time.monotonic()
        self._stalled = False

    def progress(self) -> bool:
        """Beat liveness; return whether this ended a stall (so the caller can log it)."""
        self._last_progress = time.monotonic()
        self.health.beat()
        if not self._stalled:
            return False
        self._stalled = False
        self.health.set_ready("stalled")
        return True

    def check(self, describe: Callable[[float], str]) -> float | None:
        """Work waits: report a stall past the limit; return its age when it has just begun, else None.

        ``describe(stalled_s)`` gives the readiness message (what waits, the last problem).
        """
        if self._stalled:
            return None
        stalled_s = time.monotonic() - self._last_progress
        if stalled_s <= self.limit_s:
            return None
        self._stalled = True
        self.health.set_not_ready("stalled", describe(stalled_s))
        return stalled_s


class HealthServer:
    """Serve health and Prometheus metrics on one port, in a background thread.

    Parameters
    ----------
    state
        The service's health state.
    registry
        Prometheus registry whose metrics ``/metrics`` exposes.
    host, port
        Where to listen; port 0 picks a free port (see :attr:`port`).
    """

    def __init__(
        self,
        state: HealthState,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = state
        self.registry = registry
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        """Start serving in a daemon thread; returns self for chaining."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    # ?name[]=... restricts the exposition to those metrics, as the Prometheus
                    # client's own handler does: a probe of one counter costs microseconds, the
                    # whole exposition of a busy service milliseconds.
                    names = parse_qs(query).get("name[]")
                    registry = outer.registry.restricted_registry(names) if names else outer.registry
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    self._send_check(*outer.state.live())
                elif path == "/readyz":
                    self._send_check(*outer.state.ready())
                else:
                    self._send(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain")

            def _send_check(self, ok: bool, body: dict[str, Any]) -> None:
                payload = json.dumps({"ok": ok, **body}).encode()
                self._send(200 if ok else 503, payload, "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silence per-request access logs; Prometheus scrapes every few seconds."""

        return Handler


# Re-exported for type checkers of callers that build readiness probes.
ReadinessProbe = Callable[[], tuple[bool, str]]
