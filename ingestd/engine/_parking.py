"""Parking: how an event that must wait is kept durably and re-driven without blocking its partition.

An event is *parked* when it cannot succeed yet but probably will: its data ID
names dimension records the registry does not have yet (the ``dim_file`` is
still in flight), or its file is not visible yet. Holding it in memory would
block its partition (offsets are committed in order) and lose it on a crash;
dropping it would lose it for good. So it is copied to the **retry topic** with

* ``ingestd.attempts`` — tries so far, and
* ``ingestd.not_before`` — now + ``park_delay_s`` * 2^(attempts-1), capped at
  ``park_delay_max_s``,

and its original offset is committed like any other. The daemon consumes the
retry topic too; a record read before its not-before time rewinds and pauses
only that retry partition until then. Each retry that parks again writes a new
copy with one more attempt. After ``park_max_age_s`` from the first attempt
(``verification.not_visible_timeout_s`` for files not visible) the event is
dead-lettered instead, with the reason it was waiting, for an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ingestd.deadletter import DeadLetter, DeadLetterInfo, Destination
from ingestd.sources import RawRecord
from ingestd.work import Outcome

__all__ = ["FILE_NOT_VISIBLE", "ParkingPolicy", "ParkingVerdict"]

FILE_NOT_VISIBLE = "file_not_visible"
"""Error class of an event whose file is not visible (yet)."""


@dataclass(frozen=True, slots=True)
class ParkingVerdict:
    """What becomes of an event that must wait: parked again, or dead-lettered at last."""

    outcome: Outcome
    """``parked``, or ``rejected`` once it waited too long."""
    letter: DeadLetter
    reason: str


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ParkingPolicy:
    """Decide the retry time of a parked event, or that it has waited long enough.

    Parameters
    ----------
    delay_s, delay_max_s
        First retry delay and its cap (doubling per attempt).
    max_age_s
        Longest wait from the first attempt, for missing dimension records and the like.
    not_visible_timeout_s
        Longest wait for a file that is not visible.
    clock
        Current UTC time (tests pass their own).
    """

    def __init__(
        self,
        *,
        delay_s: float = 60.0,
        delay_max_s: float = 900.0,
        max_age_s: float = 86_400.0,
        not_visible_timeout_s: float = 3_600.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.delay_s = delay_s
        self.delay_max_s = delay_max_s
        self.max_age_s = max_age_s
        self.not_visible_timeout_s = not_visible_timeout_s
        self.clock = clock

    def previous(self, record: RawRecord) -> DeadLetterInfo | None:
        """What an earlier failure of this event recorded in its headers, if any."""
        return DeadLetterInfo.from_headers(record.headers) if record.headers else None

    def park(
        self, record: RawRecord, *, error_class: str, reason: str, waiting_for_file: bool = False
    ) -> ParkingVerdict:
        """Copy ``record`` to the retry topic, or to the dead-letter topic once it waited too long.

        ``waiting_for_file`` selects the file-arrival limit (``not_visible_timeout_s``)
        instead of the general ``max_age_s``.
        """
        now = self.clock()
        previous = self.previous(record)
        attempts = (previous.attempts if previous is not None else 0) + 1
        first = now
        if (
            previous is not None
            and previous.outcome is Outcome.parked
            and previous.first_failed_at is not None
        ):
            first = min(previous.first_failed_at, now)
        limit = self.not_visible_timeout_s if waiting_for_file else self.max_age_s
        waited = (now - first).total_seconds()
        if waited >= limit:
            final_reason = f"still waiting after {_duration(waited)} ({attempts} attempts): {reason}"
            info = DeadLetterInfo(
                error_class=error_class,
                reason=final_reason,
                outcome=Outcome.rejected,
                origin=record.origin,
                failed_at=now,
                attempts=attempts,
                first_failed_at=first,
            )
            letter = DeadLetter(Destination.dead_letter, record.value, info, record.key, record.headers)
            return ParkingVerdict(Outcome.rejected, letter, final_reason)
        delay = min(self.delay_s * 2 ** (attempts - 1), self.delay_max_s)
        info = DeadLetterInfo(
            error_class=error_class,
            reason=reason,
            outcome=Outcome.parked,
            origin=record.origin,
            failed_at=now,
            attempts=attempts,
            first_failed_at=first,
            not_before=now + timedelta(seconds=delay),
        )
        letter = DeadLetter(Destination.retry, record.value, info, record.key, record.headers)
        return ParkingVerdict(Outcome.parked, letter, reason)

    def dead_letter(
        self, record: RawRecord, *, outcome: Outcome, error_class: str, reason: str
    ) -> DeadLetter:
        """The dead-letter copy of a ``rejected`` or ``conflict`` event."""
        now = self.clock()
        previous = self.previous(record)
        info = DeadLetterInfo(
            error_class=error_class,
            reason=reason,
            outcome=outcome,
            origin=record.origin,
            failed_at=now,
            attempts=(previous.attempts if previous is not None else 0) + 1,
            first_failed_at=previous.first_failed_at if previous is not None else now,
        )
        return DeadLetter(Destination.dead_letter, record.value, info, record.key, record.headers)


def _duration(seconds: float) -> str:
    if seconds >= 7_200:
        return f"{seconds / 3_600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
