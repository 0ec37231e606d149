"""The services of a chain as child processes: start, kill, restart, and what each costs in memory and CPU.

Every service runs as its own process (``python -m ingestd publish|mirror|run``,
MirrorMaker 2's JVM, the anchor consumer) so that a chaos test can SIGKILL it and a
benchmark can read its peak resident memory. Memory and CPU come from ``/proc``:
``VmHWM`` (the kernel's high-water mark of resident memory), ``VmRSS`` sampled over
time, and ``utime + stime``. A service restarted after a kill keeps one record across
its incarnations (peak = the largest, CPU = the sum).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MemorySampler",
    "ProcessUsage",
    "ServiceError",
    "ServiceProcess",
    "free_port",
    "ingestd_argv",
    "read_usage",
]


class ServiceError(RuntimeError):
    """A service failed to start or died unexpectedly; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ingestd_argv(*args: str) -> list[str]:
    """``python -m ingestd ARGS`` with this interpreter."""
    return [sys.executable, "-m", "ingestd", *args]


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """One reading of a process's memory and CPU from ``/proc``."""

    rss_bytes: int
    peak_rss_bytes: int
    cpu_s: float


def read_usage(pid: int) -> ProcessUsage | None:
    """Memory and CPU of ``pid`` (None when the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return ProcessUsage(values.get("VmRSS", 0), values.get("VmHWM", 0), cpu)


@dataclass
class ServiceProcess:
    """One service of the chain, possibly started several times.

    Parameters
    ----------
    name
        Label (``publisher``, ``mirror``, ``daemon``, ``mirrormaker2``, ``anchor``).
    argv
        Command line.
    workdir
        Working folder; the log (``<name>.log``) goes there too.
    env
        Complete environment of the process.
    health_port
        The port of its ``/healthz`` and ``/readyz``, when it has one.
    """

    name: str
    argv: Sequence[str]
    workdir: Path
    env: Mapping[str, str]
    health_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    started_at: float = 0.0
    """``time.monotonic()`` of the latest start."""
    peak_rss_bytes: int = 0
    cpu_s_finished: float = 0.0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    _last_usage: ProcessUsage | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log(self) -> Path:
        """The service's log file (every incarnation appends to it)."""
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running incarnation."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self) -> ServiceProcess:
        """Start a new incarnation (the previous one must have ended)."""
        if self.pid is not None:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.started_at = time.monotonic()
        with self.log.open("ab") as log:
            log.write(f"\n=== {self.name} start {self.starts} at {time.time():.3f} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=dict(self.env),
                start_new_session=True,
            )
        self._last_usage = None
        return self

    def alive(self) -> bool:
        """Whether the current incarnation is running."""
        return self.process is not None and self.process.poll() is None

    def assert_alive(self) -> None:
        """Raise :class:`ServiceError` with the log tail when the service has exited."""
        if not self.alive():
            code = None if self.process is None else self.process.returncode
            raise ServiceError(f"{self.name} is not running (exit {code}); log:\n{self.tail()}")

    def sample(self) -> ProcessUsage | None:
        """Read memory and CPU now and remember them (peak and a time series)."""
        pid = self.pid
        if pid is None:
            return None
        usage = read_usage(pid)
        if usage is None:
            return None
        with self._lock:
            self._last_usage = usage
            self.peak_rss_bytes = max(self.peak_rss_bytes, usage.peak_rss_bytes)
            self.rss_samples.append((time.monotonic(), usage.rss_bytes))
        return usage

    @property
    def cpu_s(self) -> float:
        """CPU seconds used by every incarnation so far (the running one as last sampled)."""
        running = self._last_usage.cpu_s if self._last_usage is not None else 0.0
        return self.cpu_s_finished + running

    def _retire(self) -> None:
        """Account the ending incarnation's last reading before its /proc entry disappears."""
        self.sample()
        with self._lock:
            if self._last_usage is not None:
                self.cpu_s_finished += self._last_usage.cpu_s
            self._last_usage = None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) to the whole process group and wait for the end."""
        if self.process is None or self.process.poll() is not None:
            return
        self._retire()
        self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(30)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self._retire()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            return self.process.returncode

    def get(self, path: str, timeout_s: float = 3.0) -> tuple[int, dict[str, Any]]:
        """GET ``path`` on the health port; returns the status and the JSON body."""
        if self.health_port is None:
            raise ServiceError(f"{self.name} has no health port")
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            body = error.read()
            with contextlib.suppress(ValueError):
                return error.code, json.loads(body or b"{}")
            return error.code, {}

    def metrics_text(self, timeout_s: float = 3.0, *, names: Sequence[str] = ()) -> str:
        """The Prometheus exposition of the service's ``/metrics`` (only ``names`` when given)."""
        if self.health_port is None:
            raise ServiceError(f"{self.name} has no metrics port")
        query = "?" + urllib.parse.urlencode([("name[]", name) for name in names]) if names else ""
        url = f"http://127.0.0.1:{self.health_port}/metrics{query}"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: bytes = response.read()
        return body.decode()

    def wait_ready(self, timeout_s: float = 60.0, path: str = "/readyz") -> None:
        """Wait until the health port answers ``path`` with 200 (or, without a port, that it stays up 1 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_alive()
            if self.health_port is None:
                time.sleep(1.0)
                self.assert_alive()
                return
            with contextlib.suppress(OSError, ValueError):
                status, _ = self.get(path, timeout_s=2.0)
                if status == 200:
                    return
            time.sleep(0.2)
        raise ServiceError(f"{self.name} not ready within {timeout_s:.0f} s; log:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The end of the log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def memory_profile(self, points: int = 10) -> list[float]:
        """Resident memory (MiB) at ``points`` evenly spaced moments of the sampled life."""
        with self._lock:
            samples = list(self.rss_samples)
        if not samples:
            return []
        step = max(1, len(samples) // points)
        shown = [round(rss / 2**20, 1) for _, rss in samples[::step]][:points]
        return [*shown, round(samples[-1][1] / 2**20, 1)]


class MemorySampler:
    """A thread sampling every service's memory and CPU at a fixed interval."""

    def __init__(self, services: Iterable[ServiceProcess], interval_s: float = 0.5) -> None:
        self._services = list(services)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for service in list(self._services):
                service.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
