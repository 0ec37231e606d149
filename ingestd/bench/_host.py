"""How fast the host is right now, measured with a fixed workload that none of our changes touch.

On a shared or virtual 2-core machine the same code has drained the same
million events at 3,600 and at 4,800 events/s ten minutes apart: every process's
CPU per event rose and fell together. A figure taken on such a host says little
unless it carries the host's speed at the time, so the benchmarks record this
yardstick before and after their runs: a pure-Python loop (what the daemon,
the publisher and the mirror spend their time in) and a system call (what the
brokers, PostgreSQL and every socket write pay on a virtual machine).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Final

__all__ = ["host_speed"]

_LOOP_ITERATIONS: Final = 100_000
_SYSCALLS: Final = 20_000
_REPEATS: Final = 5


def _python_loop() -> float:
    """Seconds for a fixed mix of dict, string and integer work (about 50 ms on a 2026 server core)."""
    started = time.perf_counter()
    table: dict[str, int] = {}
    for number in range(_LOOP_ITERATIONS):
        key = f"visit:{number % 977}/{number}"
        table[key[:12]] = table.get(key[:12], 0) + len(key)
    return time.perf_counter() - started


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
