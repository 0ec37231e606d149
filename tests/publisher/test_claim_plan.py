"""Claims from a planned sweep of Rucio's table: oldest first, nothing skipped, nothing claimed twice."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from publisher import MessageTable, rucio_tables

from .support import RucioDatabase

pytestmark = [pytest.mark.postgres]

_START = datetime(2025, 3, 20, 20, 0, 0)


def write_rows(db: RucioDatabase, names: list[str], *, first_minute: int) -> None:
    """Rows named ``names``, one minute apart from ``first_minute``, written in a shuffled order."""
    rows = [
        {
            "id": uuid.uuid4(),
            "event_type": "transfer-done",
            "payload": f'{{"name": "{name}"}}',
            "services": "kafka",
            "created_at": _START + timedelta(minutes=first_minute + index),
            "updated_at": _START,
        }
        for index, name in enumerate(names)
    ]
    with db.engine.begin() as connection:
        connection.execute(rucio_tables().messages.insert(), rows[::-1])  # heap order differs from age


def claim_names(table: MessageTable, limit: int, *, archive: int | None = None) -> list[str]:
    """Claim up to ``limit`` rows, archive the first ``archive`` of them (all by default)."""
    with table.claim(limit) as claim:
        names = [message.payload_text.split('"')[3] for message in claim.messages]
        keep = claim.messages if archive is None else claim.messages[:archive]
        claim.archive([message.id for message in keep])
    return names


@pytest.fixture
def table(rucio_db: RucioDatabase) -> MessageTable:
    return MessageTable(rucio_db.engine, rucio_tables(), ["transfer-done"], ["kafka"], plan_rows=4)


def test_claims_follow_created_at_across_plans_and_rows_written_meanwhile(
    rucio_db: RucioDatabase, table: MessageTable
) -> None:
    write_rows(rucio_db, ["a", "b", "c", "d", "e", "f"], first_minute=0)
    statements: list[str] = []
    sa.event.listen(rucio_db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    assert claim_names(table, 2) == ["a", "b"]  # plans a-d
    write_rows(rucio_db, ["g"], first_minute=10)  # newer than anything planned
    assert claim_names(table, 2) == ["c", "d"]
    assert claim_names(table, 2) == ["e", "f"]  # a new plan: e, f, g
    assert claim_names(table, 2) == ["g"]
    assert claim_names(table, 2) == []

    sorted_scans = [s for s in statements if "ORDER BY messages.created_at" in s and "LIMIT" in s]
    assert len(sorted_scans) == 2  # a-d, then e-g; not one per claim
    probes = [s for s in statements if "ORDER BY messages.id" in s]
    assert len(probes) == 3  # before each plan, and the empty table answered by key alone
    assert rucio_db.scalar("SELECT count(*) FROM messages_history") == 7


def test_rows_a_claim_left_behind_go_out_before_newer_ones(
    rucio_db: RucioDatabase, table: MessageTable
) -> None:
    write_rows(rucio_db, ["a", "b", "c", "d"], first_minute=0)
    assert claim_names(table, 2, archive=1) == ["a", "b"]  # b's record failed: its row stays
    assert claim_names(table, 2) == ["b", "c"]
    with pytest.raises(RuntimeError), table.claim(2):  # a claim that fails whole rolls back
        raise RuntimeError("Kafka went away")
    assert claim_names(table, 5) == ["d"]


def test_two_publishers_sharing_the_table_never_claim_the_same_row(
    rucio_db: RucioDatabase, table: MessageTable
) -> None:
    other = MessageTable(rucio_db.engine, rucio_tables(), ["transfer-done"], ["kafka"], plan_rows=4)
    write_rows(rucio_db, [f"r{i}" for i in range(10)], first_minute=0)
    claimed: list[str] = []
    with table.claim(3) as first:
        claimed += [m.payload_text.split('"')[3] for m in first.messages]
        # Both planned the same oldest rows; the second skips those the first holds.
        claimed += claim_names(other, 3)
        first.archive([m.id for m in first.messages])
    while names := claim_names(table, 3) + claim_names(other, 3):
        claimed += names
    assert sorted(claimed) == sorted(f"r{i}" for i in range(10))
    assert len(claimed) == len(set(claimed)) == 10
    assert rucio_db.scalar("SELECT count(*) FROM messages") == 0


def test_a_drained_table_is_polled_through_its_primary_key(
    rucio_db: RucioDatabase, table: MessageTable
) -> None:
    """Until autovacuum runs, a drained table's dead rows are read once, not on every empty poll."""
    write_rows(rucio_db, [f"n{index}" for index in range(20_000)], first_minute=0)
    with rucio_db.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE messages")
        connection.exec_driver_sql("DELETE FROM messages")  # drained; autovacuum has not run yet
    statements: list[tuple[str, Any]] = []
    sa.event.listen(
        rucio_db.engine, "before_cursor_execute", lambda *args: statements.append((args[2], args[3]))
    )

    assert claim_names(table, 2) == []
    assert table.backlog().rows == 0

    assert not [s for s, _ in statements if "ORDER BY messages.created_at" in s or "count(" in s]
    probe, parameters = next((s, p) for s, p in statements if "ORDER BY messages.id" in s)
    with rucio_db.engine.connect() as connection:
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {probe}", parameters)
        )
    assert 'Index Scan using "MESSAGES_PK"' in plan or "Index Only Scan" in plan, plan
