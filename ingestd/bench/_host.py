"""How fast the host is right now, measured with a fixed workload that none of our changes touch.

On a shared or virtual 2-core machine the same code has drained the same
million events at 3,598 and at 4,640 events/s ten minutes apart: every process's
CPU per event rose and fell together. A figure taken on such a host says little
unless it carries the host's speed at the time, so the benchmarks record this
yardstick before and after their runs (:func:`host_speed`: a pure-Python loop,
what the daemon, the publisher and the mirror spend their time in, and a system
call, what the brokers, PostgreSQL and every socket write pay on a virtual
machine) and sample the loop during each run (:class:`HostSpeedProbe`).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["HostSpeedProbe", "host_speed"]

_LOOP_ITERATIONS: Final = 100_000
_SYSCALLS: Final = 20_000
_REPEATS: Final = 5


def _python_loop(iterations: int = _LOOP_ITERATIONS, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds for a fixed mix of dict, string and integer work (full loop: 45-95 ms on the test machine)."""
    started = clock()
    table: dict[str, int] = {}
    for number in range(iterations):
        key = f"visit:{number % 977}/{number}"
        table[key[:12]] = table.get(key[:12], 0) + len(key)
    return clock() - started


def _system_calls(path: str) -> float:
    """Seconds for ``_SYSCALLS`` ``stat`` calls of one cached file."""
    started = time.perf_counter()
    for _ in range(_SYSCALLS):
        os.stat(path)
    return time.perf_counter() - started


def host_speed() -> dict[str, float]:
    """The median of a few short runs of each yardstick: lower is a faster host.

    ``python_loop_ms``: milliseconds for the fixed Python loop; ``stat_us``:
    microseconds per ``stat`` system call. About one second in all.
    """
    loops = [_python_loop() for _ in range(_REPEATS)]
    calls = [_system_calls(os.__file__) for _ in range(_REPEATS)]
    return {
        "python_loop_ms": round(statistics.median(loops) * 1e3, 1),
        "stat_us": round(statistics.median(calls) / _SYSCALLS * 1e6, 2),
    }


class HostSpeedProbe:
    """Runs a fifth of the Python yardstick every ``interval_s`` on a thread, during a run.

    Each sample is the CPU time of this thread (``thread_time``), scaled to the full
    loop: waiting to be scheduled on a busy machine does not count, a slower CPU
    does. About 10 ms of CPU every 10 s, a thousandth of one core.

    Use as a context manager; :meth:`summary` gives the median, fastest and slowest sample.
    """

    def __init__(self, interval_s: float = 10.0, iterations: int = _LOOP_ITERATIONS // 5) -> None:
        self._interval_s = interval_s
        self._iterations = iterations
        self._scale = _LOOP_ITERATIONS / iterations
        self.samples_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-speed-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            seconds = _python_loop(self._iterations, time.thread_time)
            self.samples_ms.append(round(seconds * self._scale * 1e3, 1))

    def __enter__(self) -> HostSpeedProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, float | int] | None:
        """``python_loop_ms`` median, fastest and slowest over the samples; None without any."""
        if not self.samples_ms:
            return None
        return {
            "python_loop_ms": round(statistics.median(self.samples_ms), 1),
            "fastest_ms": min(self.samples_ms),
            "slowest_ms": max(self.samples_ms),
            "samples": len(self.samples_ms),
        }
