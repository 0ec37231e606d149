"""Optional checks that a transferred file is there and is the file Rucio announced.

FTS reports a transfer done when the destination storage says so; what the ingest
host sees through its mount (NFS attribute caches, dCache namespace delays) can lag
behind. :func:`check_file` looks at the file once and says what it found:

=================== ============================================= ==================
status              meaning                                        engine's verdict
=================== ============================================= ==================
ok                  exists, size (and checksums) as announced      register
not_visible         does not exist (yet)                           park, then reject
size_mismatch       smaller than announced: may still be arriving  park, then reject
                    larger than announced                          reject
checksum_mismatch   adler32 or md5 differs                         reject
unreadable          a directory, permission denied, I/O error      reject
outside_prefix      its real path leaves the local prefix          reject
=================== ============================================= ==================

:func:`verdict` turns a check and how long the event has waited into that
decision. Checksums are computed streaming (``zlib.adler32``, ``hashlib.md5``)
with a large buffer; both release the interpreter lock, so a thread pool
(:class:`FileVerifier`) checks many files in parallel.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Literal

from ingestd.mapping import existing_real_path

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "FileCheck",
    "FileCheckStatus",
    "FileExpectation",
    "FileVerifier",
    "Verdict",
    "adler32_hex",
    "check_file",
    "verdict",
]

DEFAULT_BUFFER_BYTES: Final = 4 * 1024 * 1024
"""Read size for checksums: large enough for network file systems to stream."""


class FileCheckStatus(StrEnum):
    """What :func:`check_file` found."""

    ok = "ok"
    """Exists, regular file, size and checksums as announced."""
    not_visible = "not_visible"
    """Does not exist (yet) at the mapped path."""
    size_mismatch = "size_mismatch"
    """Size differs from the announced one."""
    checksum_mismatch = "checksum_mismatch"
    """adler32 or md5 differs from the announced one."""
    unreadable = "unreadable"
    """Not a regular file, permission denied, or an I/O error while reading."""
    outside_prefix = "outside_prefix"
    """Its real path (symbolic links resolved) is outside the local prefix it was mapped into."""

    @property
    def error_class(self) -> str:
        """The bounded dead-letter error class of this status."""
        return _ERROR_CLASSES[self]


_ERROR_CLASSES: Final = {
    FileCheckStatus.ok: "ok",
    FileCheckStatus.not_visible: "file_not_visible",
    FileCheckStatus.size_mismatch: "size_mismatch",
    FileCheckStatus.checksum_mismatch: "checksum_mismatch",
    FileCheckStatus.unreadable: "file_unreadable",
    FileCheckStatus.outside_prefix: "path_refused",
}


@dataclass(frozen=True, slots=True)
class FileCheck:
    """The result of looking at one file."""

    path: Path
    status: FileCheckStatus
    reason: str | None = None
    """What differed, for people; ``None`` when ok."""
    size: int | None = None
    """Size found, when the file could be stat-ed."""
    adler32: str | None = None
    """adler32 computed (8 lower-case hex digits), when read."""
    md5: str | None = None
    """md5 computed, when asked for and read."""
    may_still_arrive: bool = False
    """True when waiting could change the answer (not visible, or smaller than announced)."""

    @property
    def ok(self) -> bool:
        """Whether the file is as announced."""
        return self.status is FileCheckStatus.ok


def adler32_hex(value: int) -> str:
    """An adler32 value as Rucio writes it: 8 lower-case hex digits."""
    return f"{value & 0xFFFFFFFF:08x}"


def _normalise_expected_adler(value: str) -> str:
    return value.strip().lower().rjust(8, "0")


def _within(path: Path, root: str | os.PathLike[str]) -> str | None:
    """The real path when it leaves the real ``root``, else ``None``."""
    real_root = os.path.realpath(root)
    real = existing_real_path(os.fspath(path)) or os.path.realpath(path)
    if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
        return None
    return real


def check_file(
    path: str | os.PathLike[str],
    *,
    size: int | None,
    adler32: str | None,
    md5: str | None = None,
    checksum: bool = True,
    within: str | os.PathLike[str] | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> FileCheck:
    """Look at one file and compare it with what the transfer event announced.

    Parameters
    ----------
    path
        The mapped local path.
    size
        Announced size in bytes (``file-size``); ``None`` skips the size check.
    adler32
        Announced adler32 (hex); ``None`` skips it.
    md5
        Announced md5 (hex); ``None`` skips it (reading for md5 doubles the CPU cost).
    checksum
        Read the file to compare checksums; ``False`` checks existence and size only.
    within
        Local prefix the file must stay in once symbolic links are resolved (the
        mapper checked it at planning time, but the file may have appeared since).
    buffer_bytes
        Read size.

    Returns
    -------
    check
        Never raises for file-system problems: they are statuses.
    """
    target = Path(path)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return FileCheck(
            target, FileCheckStatus.not_visible, f"{target} does not exist (yet)", may_still_arrive=True
        )
    except NotADirectoryError:
        return FileCheck(target, FileCheckStatus.unreadable, f"a parent of {target} is not a directory")
    except OSError as error:
        return _unreadable(target, error)
    if within is not None:
        escaped = _within(target, within)
        if escaped is not None:
            return FileCheck(
                target,
                FileCheckStatus.outside_prefix,
                f"{target} resolves to {escaped}, outside {os.fspath(within)}",
            )
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return FileCheck(target, FileCheckStatus.unreadable, f"{target} is {kind}", size=info.st_size)
    if size is not None and info.st_size != size:
        smaller = info.st_size < size
        return FileCheck(
            target,
            FileCheckStatus.size_mismatch,
            f"{target} has {info.st_size} bytes, the transfer announced {size}"
            + (" (it may still be arriving)" if smaller else ""),
            size=info.st_size,
            may_still_arrive=smaller,
        )
    want_md5 = checksum and md5 is not None
    if not checksum or (adler32 is None and not want_md5):
        return FileCheck(target, FileCheckStatus.ok, size=info.st_size)
    try:
        found_adler, found_md5 = _checksums(target, with_md5=want_md5, buffer_bytes=buffer_bytes)
    except OSError as error:
        return _unreadable(target, error, size=info.st_size)
    expected_adler = None if adler32 is None else _normalise_expected_adler(adler32)
    if expected_adler is not None and found_adler != expected_adler:
        return FileCheck(
            target,
            FileCheckStatus.checksum_mismatch,
            f"{target} has adler32 {found_adler}, the transfer announced {expected_adler}",
            size=info.st_size,
            adler32=found_adler,
            md5=found_md5,
        )
    if want_md5 and md5 is not None and found_md5 != md5.strip().lower():
        return FileCheck(
            target,
            FileCheckStatus.checksum_mismatch,
            f"{target} has md5 {found_md5}, the transfer announced {md5.strip().lower()}",
            size=info.st_size,
            adler32=found_adler,
            md5=found_md5,
        )
    return FileCheck(target, FileCheckStatus.ok, size=info.st_size, adler32=found_adler, md5=found_md5)


def _unreadable(target: Path, error: OSError, *, size: int | None = None) -> FileCheck:
    name = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return FileCheck(
        target, FileCheckStatus.unreadable, f"{target}: {name}: {error.strerror or error}", size=size
    )


def _checksums(path: Path, *, with_md5: bool, buffer_bytes: int) -> tuple[str, str | None]:
    """Stream the file once, computing adler32 (and md5 when asked)."""
    value = 1
    digest = hashlib.md5(usedforsecurity=False) if with_md5 else None
    buffer = bytearray(buffer_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            chunk = view[:count]
            value = zlib.adler32(chunk, value)
            if digest is not None:
                digest.update(chunk)
    return adler32_hex(value), None if digest is None else digest.hexdigest()


@dataclass(frozen=True, slots=True)
class FileExpectation:
    """One file to check, with what its transfer event announced."""

    path: Path
    size: int | None = None
    adler32: str | None = None
    md5: str | None = None
    within: str | None = None
    """Local prefix the file must stay in (``UrlMapper.root_for``)."""


class FileVerifier:
    """Checks batches of files in parallel threads (checksum reads release the interpreter lock).

    Parameters
    ----------
    workers
        Threads; 1 checks in the calling thread.
    checksum
        Compare checksums (reads every file) or only existence and size.
    buffer_bytes
        Read size.
    """

    def __init__(
        self, *, workers: int = 4, checksum: bool = True, buffer_bytes: int = DEFAULT_BUFFER_BYTES
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._checksum = checksum
        self._buffer_bytes = buffer_bytes
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="verify") if workers > 1 else None

    def check(self, item: FileExpectation) -> FileCheck:
        """Check one file."""
        return check_file(
            item.path,
            size=item.size,
            adler32=item.adler32,
            md5=item.md5,
            checksum=self._checksum,
            within=item.within,
            buffer_bytes=self._buffer_bytes,
        )

    def check_many(self, items: Sequence[FileExpectation]) -> list[FileCheck]:
        """Check every file; results in the order of ``items``."""
        if self._pool is None or len(items) < 2:
            return [self.check(item) for item in items]
        return list(self._pool.map(self.check, items))

    def close(self) -> None:
        """Stop the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FileVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the engine does with a checked file."""

    action: Literal["register", "park", "reject"]
    error_class: str | None = None
    """Bounded class for park and reject (``file_not_visible``, ``size_mismatch``, ...)."""
    reason: str | None = None


def verdict(check: FileCheck, *, waited_s: float, not_visible_timeout_s: float) -> Verdict:
    """Register, park (wait and retry) or reject a checked file.

    Parameters
    ----------
    check
        What :func:`check_file` found.
    waited_s
        Seconds since the event's first attempt.
    not_visible_timeout_s
        How long a file that may still arrive is waited for before it is rejected.
    """
    if check.ok:
        return Verdict("register")
    if check.may_still_arrive and waited_s < not_visible_timeout_s:
        return Verdict("park", check.status.error_class, check.reason)
    reason = check.reason
    if check.may_still_arrive:
        reason = f"{reason}; gave up after waiting {waited_s:.0f} s (limit {not_visible_timeout_s:.0f} s)"
    return Verdict("reject", check.status.error_class, reason)
