"""Events from a JSON-lines file: one HermesK message per line (backfills, demos, tests).

Each non-blank line is handed to the engine as it is, bytes unchanged; a line
that is not valid JSON is rejected by decoding like any malformed record, never
skipped silently. With a resume marker the source records, after each
acknowledged batch, the last line done (written atomically), and a later run
with the same marker starts after it; the marker remembers the file's path and
first line so it is not applied to another file by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ingestd.log import get_logger
from ingestd.work import Position

from ._base import FatalSourceError, Progress, RawRecord

__all__ = ["JsonlFileSource"]

logger = get_logger(__name__)


class JsonlFileSource:
    """Read a JSON-lines file of events.

    Parameters
    ----------
    path
        The file; ``-`` reads standard input (no resume, no progress total).
    resume_marker
        Optional file recording the last acknowledged line.
    max_line_bytes
        Lines longer than this are cut to ``max_line_bytes + 1`` bytes, enough for
        decoding to reject them as too large without holding the whole line.
    """

    def __init__(
        self, path: Path | str, *, resume_marker: Path | None = None, max_line_bytes: int = 1_048_576
    ) -> None:
        self.path = Path(path) if str(path) != "-" else None
        self.name = f"file {path}"
        self._marker = resume_marker if self.path is not None else None
        self._max = max_line_bytes
        self._stream: IO[bytes] | None = None
        self._line = 0
        self._eof = False
        self._paused = False
        self._total_bytes: int | None = None
        self._fingerprint: dict[str, Any] = {}
        self.resumed_after = 0

    def _open(self) -> IO[bytes]:
        if self._stream is not None:
            return self._stream
        import sys

        if self.path is None:
            self._stream = sys.stdin.buffer
            return self._stream
        try:
            stream = self.path.open("rb")
            self._total_bytes = self.path.stat().st_size
        except OSError as error:
            raise FatalSourceError(f"cannot open {self.path}: {error.strerror or error}") from error
        self._stream = stream
        first = stream.readline(4096)
        stream.seek(0)
        self._fingerprint = {
            "file": str(self.path.resolve()),
            "first_line_sha256": hashlib.sha256(first).hexdigest(),
        }
        skip = self._resume_line()
        while self._line < skip and self._read_line() is not None:
            pass
        self.resumed_after = self._line
        if skip:
            logger.info("jsonl_resumed", file=str(self.path), after_line=self._line)
        return stream

    def _resume_line(self) -> int:
        if self._marker is None or not self._marker.exists():
            return 0
        try:
            marker = json.loads(self._marker.read_text())
        except (OSError, ValueError) as error:
            raise FatalSourceError(f"resume marker {self._marker} is unreadable: {error}") from error
        if {k: marker.get(k) for k in self._fingerprint} != self._fingerprint:
            raise FatalSourceError(
                f"resume marker {self._marker} belongs to {marker.get('file')!r} (or that file changed); "
                "remove it or give another --resume-marker"
            )
        return int(marker.get("line", 0))

    def _read_line(self) -> bytes | None:
        stream = self._stream
        assert stream is not None
        line = stream.readline(self._max + 1)
        if not line:
            self._eof = True
            return None
        self._line += 1
        if len(line) > self._max and not line.endswith(b"\n"):
            # Longer than any acceptable event: keep what was read (decoding rejects it), skip the rest.
            while True:
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
        return line.rstrip(b"\r\n")

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Read up to ``max_records`` non-blank lines."""
        self._open()
        if self._paused:
            time.sleep(min(timeout_s, 0.2))
            return []
        records: list[RawRecord] = []
        while len(records) < max_records and not self._eof:
            line = self._read_line()
            if line is None:
                break
            if not line.strip():
                continue
            position = Position(source="file", line=self._line)
            records.append(RawRecord(value=line, position=position, origin=position))
        return records

    @property
    def exhausted(self) -> bool:
        """End of file reached."""
        return self._eof

    def acknowledge(self, records: Sequence[RawRecord]) -> None:
        """Write the resume marker (atomically: temporary file, fsync, rename)."""
        if self._marker is None or not records:
            return
        line = max(record.position.line or 0 for record in records)
        tmp = self._marker.with_name(self._marker.name + ".tmp")
        try:
            with tmp.open("w") as stream:
                json.dump({**self._fingerprint, "line": line}, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, self._marker)
        except OSError as error:
            raise FatalSourceError(f"cannot write resume marker {self._marker}: {error}") from error

    def pause(self) -> None:
        """Stop reading until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        """Read again."""
        self._paused = False

    def keepalive(self, timeout_s: float) -> None:
        """Nothing to keep alive: wait."""
        time.sleep(max(timeout_s, 0.0))

    def readiness(self) -> tuple[bool, str]:
        """Always ready."""
        return True, "file"

    def progress(self) -> Progress:
        """Bytes read against the file size."""
        if self._stream is None or self._total_bytes is None:
            return Progress(done=self._line, total=None, unit="lines")
        try:
            done = self._stream.tell()
        except (OSError, ValueError):
            done = 0
        return Progress(done=done, total=self._total_bytes, unit="bytes")

    def close(self) -> None:
        """Close the file."""
        if self._stream is not None and self.path is not None:
            self._stream.close()
        self._stream = None
