"""``ingestd site supervise``: systemd readiness and watchdog for a service, from its health endpoint.

The services serve ``/healthz`` (the main loop is turning) and ``/readyz`` (able
to work right now) but do not speak systemd's notification protocol. Rather than
teach each one, the rendered units run them under this small supervisor:

- under systemd (``$NOTIFY_SOCKET`` set) it starts the service as its child,
  sends ``READY=1`` once ``/healthz`` first answers 200, ``WATCHDOG=1`` each time
  it answers again, and a ``STATUS=`` line with ``/readyz``'s reasons (shown by
  ``systemctl status``). A hung service stops answering, the pings stop, and
  systemd's ``WatchdogSec=`` restarts the unit. SIGTERM, SIGINT and SIGHUP are
  forwarded once to the child; the exit status is the child's (128+N for a
  signal), so ``RestartPreventExitStatus=2`` sees invalid settings as such;
- without systemd it simply ``exec``s the service: same process, nothing added.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final

from ingestd.log import get_logger

__all__ = ["HealthProbe", "notify", "supervise"]

logger = get_logger(__name__)

_FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_SYSTEMD_VARIABLES: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_DEFAULT_INTERVAL_S: Final = 10.0


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one sd_notify datagram (``READY=1`` ...); False when there is no socket or it fails.

    A path starting with ``@`` is an abstract socket, as systemd documents.
    """
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError as error:
        logger.warning("supervise.notify_failed", error=type(error).__name__, detail=str(error))
        return False
    return True


@dataclass(frozen=True)
class HealthProbe:
    """Reads a service's ``/healthz`` and, beside it, ``/readyz``."""

    health_url: str
    timeout_s: float = 5.0

    @property
    def ready_url(self) -> str:
        """``/readyz`` on the same server."""
        base = self.health_url.rsplit("/", 1)[0]
        return f"{base}/readyz"

    def live(self) -> bool:
        """Whether ``/healthz`` answers 200."""
        return self._get(self.health_url)[0] == 200

    def readiness(self) -> str:
        """A one-line status for ``systemctl status``: ready, or the reasons it is not."""
        status, body = self._get(self.ready_url)
        if status == 200:
            return "ready"
        if status is None:
            return "health endpoint not answering"
        try:
            reasons = json.loads(body).get("not_ready", {})
        except (ValueError, AttributeError):
            reasons = {}
        if isinstance(reasons, dict) and reasons:
            return "not ready: " + "; ".join(f"{key}: {value}" for key, value in sorted(reasons.items()))
        return f"not ready (HTTP {status})"

    def _get(self, url: str) -> tuple[int | None, str]:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None, ""


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of systemd's watchdog period, or None when no watchdog is armed for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 1_000_000 / 3)
    except ValueError:
        return None


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def supervise(
    command: Sequence[str],
    health_url: str,
    *,
    hidden_variables: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run ``command`` as described in the module docstring; return its exit status.

    Parameters
    ----------
    command
        The service's command line.
    health_url
        Its ``/healthz`` URL.
    hidden_variables
        Variables meant for the supervisor only, removed from the child's environment.
    environ
        The environment (default: the process's).
    """
    if not command:
        raise ValueError("supervise needs the service's command line after --")
    source = dict(os.environ if environ is None else environ)
    child_env = {key: value for key, value in source.items() if key not in hidden_variables}
    socket_path = source.get("NOTIFY_SOCKET")
    if not socket_path:
        os.execvpe(command[0], list(command), child_env)
    for name in _SYSTEMD_VARIABLES:
        child_env.pop(name, None)
    watchdog = _watchdog_interval(source)
    interval = min(watchdog, _DEFAULT_INTERVAL_S) if watchdog else _DEFAULT_INTERVAL_S
    probe = HealthProbe(health_url, timeout_s=min(5.0, interval))
    child = subprocess.Popen(list(command), env=child_env)
    logger.info("supervise.started", pid=child.pid, command=list(command), watchdog_interval_s=watchdog)
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            notify("STOPPING=1", socket_path)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    ready = False
    status = ""
    try:
        while child.poll() is None:
            if not stopping and probe.live():
                messages = []
                if not ready:
                    messages.append(f"READY=1\nMAINPID={os.getpid()}")
                    ready = True
                    logger.info("supervise.ready", pid=child.pid)
                if watchdog:
                    messages.append("WATCHDOG=1")
                readiness = probe.readiness()
                if readiness != status:
                    status = readiness
                    messages.append(f"STATUS={readiness}")
                if messages:
                    notify("\n".join(messages), socket_path)
            try:
                child.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = _exit_status(child.wait())
    logger.info("supervise.exited", pid=child.pid, status=code)
    return code
