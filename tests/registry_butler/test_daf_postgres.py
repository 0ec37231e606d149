"""The adapter on a Butler repository whose registry is PostgreSQL: the production layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from butler_registry.daf import DafButlerRegistry, DafButlerSettings
from butler_registry.interface import ItemStatus, TransientRegistryError

from .conftest import CALEXP, FileFactory, dataset, open_butler

pytestmark = [pytest.mark.butler, pytest.mark.postgres]


def test_register_on_postgres(postgres_repo: Path, samples_dir: Path, files: FileFactory) -> None:
    repo = postgres_repo
    with DafButlerRegistry.open(str(repo)) as registry:
        assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
        good = [dataset(files(f"c{d}.fits"), spec=CALEXP, detector=d) for d in range(5)]
        missing = dataset(files("m.fits"), spec=CALEXP, visit=4242, detector=1)
        result = registry.register([*good[:2], missing, *good[2:]])
        assert [item.status for item in result.items] == [ItemStatus.inserted] * 2 + [
            ItemStatus.missing_dimensions
        ] + [ItemStatus.inserted] * 3
        assert result.items[2].missing == ("visit:HSC/4242",)
        replay = registry.register(good)
        assert {item.status for item in replay.items} == {ItemStatus.already_present}
    butler = open_butler(repo)
    assert all(butler.get_dataset(record.id) is not None for record in good)
    assert butler.get_dataset(missing.id) is None


@pytest.mark.slow
def test_database_outage_is_transient_and_recovers(
    make_repo: Callable[..., Path], private_postgres: Any, samples_dir: Path, files: FileFactory
) -> None:
    """Stop the (private) database under the adapter: transient error, nothing half-written, then recovery."""
    import psycopg

    admin = private_postgres.endpoints()["INGESTD_TEST_POSTGRES_URL"]
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("CREATE DATABASE butler")
    repo = make_repo("outage-repo", db=admin.rsplit("/", 1)[0] + "/butler")
    registry = DafButlerRegistry(DafButlerSettings(repo=str(repo)))
    assert registry.import_dimensions(samples_dir / "prep.yaml").status is ItemStatus.inserted
    before = dataset(files("before.fits"), spec=CALEXP, detector=1)
    assert registry.register([before]).items[0].status is ItemStatus.inserted

    batch = [dataset(files(f"during{d}.fits"), spec=CALEXP, detector=d) for d in range(2, 6)]
    private_postgres.stop()
    with pytest.raises(TransientRegistryError):
        registry.register(batch)
    with pytest.raises(TransientRegistryError):
        registry.ping()

    private_postgres.start()
    private_postgres.wait_ready()
    registry.ping()
    result = registry.register(batch)
    assert {item.status for item in result.items} == {ItemStatus.inserted}
    butler = open_butler(repo)
    assert all(butler.get_dataset(record.id) is not None for record in [before, *batch])
    registry.close()
