"""The backfill's state file: the listing of DIDs, in a fixed order, and how far it was acknowledged.

Rucio lists a scope's files in no guaranteed order and cannot start a listing
after a given name, so a resumable backfill cannot rely on listing again. It
keeps its own listing instead, a SQLite file under ``--state-dir``:

* ``did(seq, scope, name)``: every file name listed, numbered in the order it was
  first seen (``UNIQUE(scope, name)``: listing a unit again never renumbers a name);
* ``unit(key, listed)``: the listing units (one per scope, or the one dataset),
  each marked when its listing finished, so an interrupted listing re-lists only
  the unit it was in;
* ``state``: the parameters the file belongs to, the last acknowledged ``seq``
  (written after the registry committed: the resume checkpoint) and whether the
  run finished.

Memory stays flat whatever the size: names go to disk in chunks and are read
back in chunks. Every write is a transaction (``synchronous=FULL``), so a
``kill -9`` leaves the last committed state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["ListingSpool", "SpoolMismatchError", "SpooledDid"]

SPOOL_VERSION: Final = 1
"""Format of the state file; a file of another version is refused."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS unit (position INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
    "listed INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS did (seq INTEGER PRIMARY KEY, scope TEXT NOT NULL, name TEXT NOT NULL, "
    "UNIQUE (scope, name))",
)


class SpoolMismatchError(ValueError):
    """The state file belongs to a backfill with other parameters (or another format)."""


@dataclass(frozen=True, slots=True)
class SpooledDid:
    """One listed file and its place in the listing."""

    seq: int
    scope: str
    name: str


class ListingSpool:
    """A backfill's listing and checkpoint in one SQLite file.

    Parameters
    ----------
    path
        The state file (created with its folder when missing).
    parameters
        What the backfill is (RSE, scopes, dataset, since): a file written for other
        parameters is refused, so a checkpoint is never applied to another listing.
    """

    def __init__(self, path: Path, parameters: Mapping[str, Any]) -> None:
        self.path = path
        self.parameters = dict(parameters)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
        self._check_or_claim()

    # -- set-up --------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def _check_or_claim(self) -> None:
        wanted = json.dumps(self.parameters, sort_keys=True)
        version = self._get("version")
        found = self._get("parameters")
        if version is None and found is None:
            with self._transaction():
                self._put("version", str(SPOOL_VERSION))
                self._put("parameters", wanted)
                self._put("acknowledged", "0")
                self._put("finished", "0")
            return
        if version != str(SPOOL_VERSION):
            raise SpoolMismatchError(
                f"{self.path} is a backfill state file of format {version}, not {SPOOL_VERSION}; "
                "remove it (or use --restart) to start the backfill afresh"
            )
        if found != wanted:
            raise SpoolMismatchError(
                f"{self.path} belongs to a backfill of {found}, not {wanted}; remove it or use --restart"
            )

    def reset(self) -> None:
        """Forget the listing and the checkpoint (a finished run, or ``--restart``)."""
        with self._transaction():
            self._db.execute("DELETE FROM did")
            self._db.execute("DELETE FROM unit")
            self._put("acknowledged", "0")
            self._put("finished", "0")
            self._put("planned", "0")

    # -- listing units ---------------------------------------------------------------------------------

    def plan_units(self, keys: Iterable[str]) -> None:
        """Declare the listing units, in listing order; a unit already declared keeps its place and state.

        A unit new to a resumed backfill (a scope created since) is listed after the others.
        """
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO unit (key) VALUES (?)", ((key,) for key in keys))
            self._put("planned", "1")

    def units_to_list(self) -> list[str]:
        """Units whose listing has not finished, in order."""
        rows = self._db.execute("SELECT key FROM unit WHERE listed = 0 ORDER BY position").fetchall()
        return [str(row[0]) for row in rows]

    @property
    def planned(self) -> bool:
        """Whether the units were declared (possibly none: an empty listing is complete)."""
        return self._get("planned") == "1"

    def add(self, dids: Iterable[tuple[str, str]]) -> int:
        """Append names not listed yet (one transaction); returns how many were new."""
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO did (scope, name) VALUES (?, ?)", dids)
            return self._db.total_changes - before

    def unit_listed(self, key: str) -> None:
        """Mark the listing of ``key`` finished."""
        with self._transaction():
            self._db.execute("UPDATE unit SET listed = 1 WHERE key = ?", (key,))

    @property
    def listing_complete(self) -> bool:
        """Every declared unit was listed to its end."""
        return self.planned and not self.units_to_list()

    # -- reading and the checkpoint -----------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[SpooledDid]:
        """Up to ``limit`` listed files after ``seq``, in listing order."""
        rows = self._db.execute(
            "SELECT seq, scope, name FROM did WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [SpooledDid(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    @property
    def listed(self) -> int:
        """Files listed so far."""
        return int(self._db.execute("SELECT count(*) FROM did").fetchone()[0])

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` listed (0 when none)."""
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM did").fetchone()[0])

    @property
    def acknowledged(self) -> int:
        """The checkpoint: every file with ``seq`` up to this one is done."""
        return int(self._get("acknowledged") or 0)

    def acknowledge(self, seq: int) -> None:
        """Move the checkpoint forward to ``seq`` (never backwards), durably."""
        with self._transaction():
            self._db.execute(
                "UPDATE state SET value = CAST(? AS TEXT) "
                "WHERE key = 'acknowledged' AND CAST(value AS INTEGER) < ?",
                (seq, seq),
            )

    @property
    def finished(self) -> bool:
        """Whether the backfill of this file ran to its end."""
        return self._get("finished") == "1"

    def finish(self) -> None:
        """Mark the backfill done (the next run with these parameters starts afresh)."""
        with self._transaction():
            self._put("finished", "1")

    def close(self) -> None:
        """Close the file."""
        self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
