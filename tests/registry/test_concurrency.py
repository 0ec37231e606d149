"""Two writers at once on PostgreSQL: each dataset is registered exactly once, nobody deadlocks."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from butler_registry import SqlRegistry
from butler_registry.interface import ItemStatus, RegisterResult

from .contract import DatasetFactory

pytestmark = pytest.mark.postgres


def test_concurrent_writers_register_each_dataset_once(
    postgres_database: str, samples_dir: Path, tmp_path: Path, open_sql: Callable[..., SqlRegistry]
) -> None:
    first = open_sql(postgres_database, create=True)
    first.import_dimensions(samples_dir / "prep.yaml")
    second = open_sql(postgres_database)
    datasets = DatasetFactory(tmp_path)
    # New runs and a new dataset type too: both writers register them on the fly at once.
    items = [datasets.calexp(detector, run=f"HSC/runs/r{detector % 3}") for detector in range(112)]
    items.append(datasets.visit_summary(run="HSC/runs/r0"))
    batches = []
    for seed in (1, 2):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        batches.append(shuffled)
    barrier = threading.Barrier(2)
    results: list[RegisterResult] = []
    errors: list[BaseException] = []

    def write(registry: SqlRegistry, batch: list[object]) -> None:
        barrier.wait()
        try:
            for start in range(0, len(batch), 25):
                results.append(registry.register(batch[start : start + 25]))  # type: ignore[arg-type]
        except BaseException as error:  # reported below, in the test's own thread
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(r, b)) for r, b in zip((first, second), batches, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    by_id: dict[object, list[ItemStatus]] = {}
    for result in results:
        for item in result.items:
            by_id.setdefault(item.dataset_id, []).append(item.status)
    assert len(by_id) == len(items)
    assert all(Counter(s) == {ItemStatus.inserted: 1, ItemStatus.already_present: 1} for s in by_id.values())
    stats = first.stats()
    assert (stats.datasets, stats.runs, stats.dataset_types) == (len(items), 3, 2)
