"""The optional verify stage: each file exists with the size and checksum Rucio announced.

The per-file work is :mod:`ingestd.verify` (a thread pool: a stat is I/O bound
and ``zlib.adler32`` releases the interpreter lock). This module adapts it to the
engine: a file that may still arrive (not visible yet, or smaller than
announced) is **parked** and retried until ``verification.not_visible_timeout_s``
after its first attempt; anything that waiting cannot fix (checksum or size
mismatch, unreadable, a real path outside its prefix) is **rejected**.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ingestd.verify import FileCheck, FileExpectation
from ingestd.verify import FileVerifier as _FileChecker

__all__ = ["CheckVerdict", "FileToCheck", "FileVerifier", "Verifier"]


@dataclass(frozen=True, slots=True)
class FileToCheck:
    """A file and what Rucio announced about it."""

    path: Path
    size: int | None
    adler32: str | None
    md5: str | None = None


@dataclass(frozen=True, slots=True)
class CheckVerdict:
    """The engine's reading of one file check."""

    ok: bool
    park: bool = False
    """Not ok, but may become ok by waiting (not visible yet, still arriving)."""
    error_class: str | None = None
    reason: str | None = None


class Verifier(Protocol):
    """Checks files; returns one verdict per file, in order, and never raises for a bad file."""

    def verify(self, files: Sequence[FileToCheck]) -> list[CheckVerdict]:
        """Check ``files``."""

    def close(self) -> None:
        """Release the worker threads."""


class FileVerifier:
    """Verify files with :class:`ingestd.verify.FileVerifier`.

    Parameters
    ----------
    checksum
        Compare checksums too (a full read of each file); size only when False.
    workers
        Threads.
    root_for
        The local prefix a path was mapped into (``UrlMapper.root_for``); its real
        path must stay inside it.
    """

    def __init__(
        self,
        *,
        checksum: bool = True,
        workers: int = 4,
        root_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self._checker = _FileChecker(workers=workers, checksum=checksum)
        self._root_for = root_for

    def verify(self, files: Sequence[FileToCheck]) -> list[CheckVerdict]:
        """Check every file; one verdict each, in order."""
        expectations = [
            FileExpectation(
                path=file.path,
                size=file.size,
                adler32=file.adler32,
                md5=file.md5,
                within=self._root_for(str(file.path)) if self._root_for is not None else None,
            )
            for file in files
        ]
        return [_verdict(check) for check in self._checker.check_many(expectations)]

    def close(self) -> None:
        """Stop the worker threads."""
        self._checker.close()


def _verdict(check: FileCheck) -> CheckVerdict:
    if check.ok:
        return CheckVerdict(ok=True)
    return CheckVerdict(
        ok=False,
        park=check.may_still_arrive,
        error_class=check.status.error_class,
        reason=check.reason or f"{check.path}: {check.status.value}",
    )
