"""Progress of a finite run (replay, re-drive) on standard error, and its summary.

On a terminal the line is redrawn in place with a bar when the size of the input
is known; otherwise (a log file, CI) one plain line is printed every
``interval_s`` seconds, so a long backfill still shows it is moving without
flooding a log.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TextIO

from ingestd.sources import Progress
from ingestd.work import EventReport, Outcome

from ._runner import RunStats

__all__ = ["ProgressReporter", "format_summary"]


class ProgressReporter:
    """An observer that draws progress from the reports and the source's own progress.

    Parameters
    ----------
    progress
        Returns the source's progress (bytes of a file, records of a range).
    stream
        Where to draw (standard error).
    tty
        Redraw in place; default: whether ``stream`` is a terminal.
    interval_s
        Seconds between plain lines when not on a terminal.
    """

    def __init__(
        self,
        progress: Callable[[], Progress],
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = 10.0,
    ) -> None:
        self._progress = progress
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval = interval_s if not self._tty else 0.2
        self._last = 0.0
        self._started = time.monotonic()
        self.counts: Counter[Outcome] = Counter()
        self._drawn = False
        self._drawn_events = -1

    def __call__(self, reports: Sequence[EventReport]) -> None:
        """Count ``reports`` and redraw if due."""
        self.counts.update(report.outcome for report in reports)
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        events = sum(self.counts.values())
        self._drawn_events = events
        elapsed = max(time.monotonic() - self._started, 1e-9)
        progress = self._progress()
        share = ""
        bar = ""
        if progress.total:
            fraction = min(progress.done / progress.total, 1.0)
            share = f" {fraction:6.1%}"
            if self._tty:
                filled = int(fraction * 24)
                bar = " [" + "#" * filled + "." * (24 - filled) + "]"
        failed = self.counts[Outcome.rejected] + self.counts[Outcome.conflict]
        line = (
            f"{bar}{share} {events} events, {events / elapsed:,.0f}/s"
            f" (registered {self.counts[Outcome.registered]}, present {self.counts[Outcome.already_present]},"
            f" dead-lettered {failed}, parked {self.counts[Outcome.parked]})"
        ).strip()
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """Draw a last time (unless nothing changed) and end the line."""
        if sum(self.counts.values()) != self._drawn_events:
            self._draw()
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def format_summary(stats: RunStats, *, what: str, dead_letters: str) -> str:
    """The human summary printed at the end of a replay or re-drive."""
    outcomes = stats.outcomes
    lines = [
        f"{what}: {stats.events} events in {stats.elapsed_s:.1f} s "
        f"({stats.rate:,.0f} events/s, {stats.batches} batches)"
    ]
    for outcome in Outcome:
        lines.append(f"  {outcome.value:16} {outcomes.get(outcome, 0)}")
    failed = outcomes.get(Outcome.rejected, 0) + outcomes.get(Outcome.conflict, 0)
    if failed or outcomes.get(Outcome.parked, 0):
        lines.append(f"  dead letters and parked events went to {dead_letters}")
    return "\n".join(lines)
