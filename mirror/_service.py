"""The mirror as a service: replicator, health and metrics endpoint, signals, exit code.

What ``ingestd mirror`` runs. SIGTERM and SIGINT end the loop between two
transactions; a fatal client error ends it with exit code 1 so the supervisor
(systemd, Kubernetes) restarts the process, which resumes from the positions
committed on the target.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from prometheus_client import CollectorRegistry

from ingestd.log import get_logger
from monitoring.http_server import HealthServer, HealthState
from monitoring.metrics import MirrorMetrics

from ._errors import MirrorFatalError
from ._replicator import Replicator
from ._settings import MirrorSettings

__all__ = ["EXIT_FATAL", "EXIT_OK", "MirrorService"]

logger = get_logger(__name__)

EXIT_OK = 0
"""Stopped on request."""
EXIT_FATAL = 1
"""The Kafka clients could not continue; restart the process."""


class MirrorService:
    """One mirror instance with its ``/healthz``, ``/readyz`` and ``/metrics`` port.

    Parameters
    ----------
    settings
        Validated settings.
    registry
        Prometheus registry to serve; a fresh one by default.

    Notes
    -----
    Building the service binds the HTTP port (so :attr:`http_port` is known at
    once, even with ``http_port: 0``); Kafka connections are made by :meth:`run`.
    """

    def __init__(self, settings: MirrorSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = MirrorMetrics(self.registry)
        # Liveness is beaten only by progress (see Replicator._check_stall): it fails after the stall limit.
        self.health = HealthState(liveness_timeout_s=settings.stall_limit_s)
        self.replicator = Replicator(settings, self.metrics, self.health)
        self._server = HealthServer(
            self.health, self.registry, host=settings.http_host, port=settings.http_port
        )

    @property
    def http_port(self) -> int:
        """The port the health and metrics endpoint listens on."""
        return self._server.port

    def run(self, stop: threading.Event | None = None) -> int:
        """Mirror until ``stop`` is set (or SIGTERM/SIGINT in the main thread); return the exit code."""
        stop = stop or threading.Event()
        restore = _handle_signals(stop)
        self._server.start()
        logger.info("mirror.http_listening", host=self.settings.http_host, port=self.http_port)
        try:
            self.replicator.start(stop)
            self.replicator.run(stop)
        except MirrorFatalError as error:
            logger.error("mirror.fatal", error=str(error), error_type=type(error).__name__)
            return EXIT_FATAL
        finally:
            self.replicator.close()
            self._server.stop()
            restore()
        return EXIT_OK


def _handle_signals(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop``; returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("mirror.stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
