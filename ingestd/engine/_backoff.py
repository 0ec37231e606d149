"""Exponential back-off with a cap and jitter, for retrying a stage after a transient failure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``, each randomised by ``±jitter``.

    Jitter keeps several daemons that lost the same database from retrying in
    step when it comes back.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        base = min(self.initial_s * (2**self.attempts), self.max_s)
        self.attempts += 1
        spread = base * self.jitter
        delay: float = base + self.rng.uniform(-spread, spread)
        return max(0.0, delay)

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self.attempts = 0
