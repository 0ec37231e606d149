"""Writing events into Rucio's ``messages`` table with Rucio's own code, as a stream.

Rucio's ``add_messages`` runs in the Rucio virtualenv of the test bed
(:mod:`deploy.local.rucio_env`: the real ``rucio[postgresql]`` server package, kept
apart from this project's dependencies). :class:`RucioFeeder` keeps one such
process alive for a whole run and sends it chunks of events over a pipe, so a
million events cost one interpreter start, not one per chunk.

The feeder process sets each chunk's time stamps just before its insert:
``transferred_at`` is that moment (UTC, microseconds, Rucio's ``str(datetime)``
form) and ``created_at``/``submitted_at``/``started_at`` lie 40, 12 and 3 seconds
before it, as an FTS transfer's would. End-to-end latency is measured from
``transferred_at``, so it includes the insert itself. Each insert is one
transaction (Rucio's ``@transactional_session``) and is acknowledged back on a
separate pipe with the number of rows and the stamp. An insert that fails (the
database restarting under a chaos test) is retried for up to two minutes; callers
that restart the database hold the feed first, so no insert is in doubt.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["FeedError", "FeedStats", "RucioFeeder"]

_FEEDER_SNIPPET: Final = textwrap.dedent(
    """
    import datetime, json, os, sys, time
    from rucio.core.message import add_messages

    acks = os.fdopen(int(os.environ["INGESTD_E2E_ACK_FD"]), "w", buffering=1)
    acks.write("ready\\n")
    delta = datetime.timedelta
    for line in sys.stdin:
        chunk = json.loads(line)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        for message in chunk:
            payload = message["payload"]
            payload["transferred_at"] = str(now)
            payload["started_at"] = str(now - delta(seconds=3))
            payload["submitted_at"] = str(now - delta(seconds=12))
            payload["created_at"] = str(now - delta(seconds=40))
        for attempt in range(240):  # the database may be restarting (chaos tests): retry for two minutes
            try:
                add_messages(chunk)
                break
            except Exception as error:
                print(f"add_messages failed ({type(error).__name__}: {error}); retrying", flush=True)
                time.sleep(0.5)
        else:
            raise SystemExit("add_messages kept failing")
        acks.write(f"{len(chunk)} {now.isoformat()}\\n")
    acks.close()
    """
)


class FeedError(RuntimeError):
    """The Rucio feeder process failed; the message carries the end of its log."""


@dataclass
class FeedStats:
    """What the feeder wrote, and when."""

    rows: int = 0
    chunks: int = 0
    first_stamp: datetime | None = None
    last_stamp: datetime | None = None
    started_s: float | None = None
    """When the first chunk was sent (``time.monotonic()``); the process start-up is not counted."""
    finished_s: float | None = None

    @property
    def rows_per_s(self) -> float:
        """Average insert rate from the first chunk sent to the last acknowledged."""
        if self.started_s is None:
            return 0.0
        end = self.finished_s if self.finished_s is not None else time.monotonic()
        return self.rows / max(end - self.started_s, 1e-9)


class RucioFeeder:
    """A long-lived process writing chunks of events with ``rucio.core.message.add_messages``.

    Parameters
    ----------
    python
        The Rucio virtualenv's interpreter.
    rucio_config
        ``rucio.cfg`` pointing at the Rucio database (``[hermes] services_list`` decides
        how many rows each event makes).
    log
        File receiving the process's standard output and error.
    max_in_flight
        Chunks sent but not yet acknowledged before :meth:`send` waits (bounds memory
        and keeps paced feeding honest).
    """

    def __init__(self, python: Path, rucio_config: Path, log: Path, *, max_in_flight: int = 4) -> None:
        self._log_path = log
        self._max_in_flight = max_in_flight
        read_fd, write_fd = os.pipe()
        env = {
            **os.environ,
            "RUCIO_CONFIG": str(rucio_config),
            "INGESTD_E2E_ACK_FD": str(write_fd),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("PYTHONPATH", None)  # never let this project's packages shadow Rucio's
        self._log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [str(python), "-c", _FEEDER_SNIPPET],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self._acks: IO[str] = os.fdopen(read_fd, "r")
        self.stats = FeedStats()
        self._sent_chunks = 0
        self._ready = threading.Event()
        self._acked = threading.Condition()
        self._reader = threading.Thread(target=self._read_acks, name="rucio-feeder-acks", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """Process id of the feeder."""
        return self._process.pid

    def _read_acks(self) -> None:
        for line in self._acks:
            if line.strip() == "ready":
                self._ready.set()
                continue
            rows, stamp = line.split()
            moment = datetime.fromisoformat(stamp)
            with self._acked:
                self.stats.rows += int(rows)
                self.stats.chunks += 1
                self.stats.first_stamp = self.stats.first_stamp or moment
                self.stats.last_stamp = moment
                self._acked.notify_all()
        with self._acked:
            self._acked.notify_all()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the process has imported Rucio and can insert at once (paced feeds start after it)."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.5):
            self._check_alive()
            if time.monotonic() > deadline:
                raise FeedError(f"the Rucio feeder was not ready within {timeout_s:.0f} s:\n{self._tail()}")

    def _check_alive(self) -> None:
        if self._process.poll() is not None:
            raise FeedError(f"the Rucio feeder exited with {self._process.returncode}:\n{self._tail()}")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-30:])
        return "(no log)"

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue one chunk (``[{event_type, payload}]``); blocks while too many are unacknowledged."""
        if not events:
            return
        with self._acked:
            while self._sent_chunks - self.stats.chunks >= self._max_in_flight:
                self._check_alive()
                self._acked.wait(0.5)
        self._check_alive()
        assert self._process.stdin is not None
        if self.stats.started_s is None:
            self.stats.started_s = time.monotonic()
        line = json.dumps(list(events), separators=(",", ":")) + "\n"
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
        except BrokenPipeError as error:
            raise FeedError(f"the Rucio feeder went away:\n{self._tail()}") from error
        self._sent_chunks += 1

    def wait_acknowledged(self, timeout_s: float = 600.0) -> FeedStats:
        """Block until every chunk sent so far is in the table."""
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while self.stats.chunks < self._sent_chunks:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise FeedError(f"Rucio inserts not acknowledged within {timeout_s:.0f} s")
                self._acked.wait(0.5)
        return self.stats

    def close(self, timeout_s: float = 600.0) -> FeedStats:
        """Finish the queued chunks, end the process, and return the statistics."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        try:
            code = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
            raise FeedError("the Rucio feeder did not finish in time") from None
        self._reader.join(10)
        self._log.close()
        self.stats.finished_s = time.monotonic()
        if code != 0:
            raise FeedError(f"the Rucio feeder failed (exit {code}):\n{self._tail()}")
        return self.stats

    def kill(self) -> None:
        """End the process at once (error paths)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._log.close()


def chunked(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Lists of up to ``size`` consecutive items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
