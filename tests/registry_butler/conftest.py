"""Fixtures of the real-Butler tests: fresh daf_butler repositories on SQLite and PostgreSQL.

Repositories are made the way ``butler create`` makes them (``Butler.makeRepo``).
This environment has daf_butler but not the packages that provide most default
formatters (``lsst.obs.base``, ``lsst.pipe.tasks``...), so each repository's
datastore configuration maps the storage classes whose formatter cannot be imported
here to daf_butler's JSON formatter. Formatters are only recorded at ingest; no
file is read, so the choice changes nothing the tests look at.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from butler_registry.daf import DafButlerRegistry, DafButlerSettings, create_butler_repo
from butler_registry.interface import DatasetRecord, DatasetTypeSpec, FileInfo

FALLBACK_FORMATTER = "lsst.daf.butler.formatters.json.JsonFormatter"

VISIT_SUMMARY = DatasetTypeSpec("visitSummary", ("instrument", "visit"), "ExposureCatalog")
CALEXP = DatasetTypeSpec("calexp", ("instrument", "visit", "detector"), "ExposureF")
HSC_RUN = "HSC/runs/RC2/w_2023_32/DM-40356/20230814T170253Z"
"""The run of the sample sidecars."""


def _importable(class_name: str) -> bool:
    module = class_name.rsplit(".", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def formatter_overrides() -> dict[str, str]:
    """Storage class → formatter for every default formatter this environment cannot import."""
    from lsst.daf.butler import Config
    from lsst.resources import ResourcePath

    config = Config(ResourcePath("resource://lsst.daf.butler/configs/datastores/formatters.yaml"))
    overrides: dict[str, str] = {}
    for storage_class in config.names(topLevelOnly=True):
        if storage_class in {"default", "write_recipes"}:
            continue
        value: Any = config[storage_class]
        class_name = value if isinstance(value, str) else value.get("formatter") if value else None
        if isinstance(class_name, str) and not _importable(class_name):
            overrides[storage_class] = FALLBACK_FORMATTER
    return overrides


@pytest.fixture(scope="session")
def formatters() -> dict[str, str]:
    """The formatter overrides every test repository is created with."""
    return formatter_overrides()


@pytest.fixture
def make_repo(tmp_path: Path, formatters: dict[str, str]) -> Callable[..., Path]:
    """Create a fresh Butler repository: ``make_repo("name")`` (SQLite) or ``make_repo("name", db=url)``."""

    def make(name: str = "repo", *, db: str | None = None) -> Path:
        root = tmp_path / name
        create_butler_repo(root, registry_db=db, formatters=formatters)
        return root

    return make


@pytest.fixture
def sqlite_repo(make_repo: Callable[..., Path]) -> Path:
    """A fresh Butler repository with a SQLite registry."""
    return make_repo("sqlite-repo")


@pytest.fixture
def daf_registry(sqlite_repo: Path) -> Iterator[DafButlerRegistry]:
    """The adapter on a fresh SQLite repository."""
    registry = DafButlerRegistry(DafButlerSettings(repo=str(sqlite_repo)))
    yield registry
    registry.close()


@pytest.fixture
def hsc_registry(daf_registry: DafButlerRegistry, samples_dir: Path) -> DafButlerRegistry:
    """The adapter with the sample export's HSC dimension records (visit 330, 112 detectors)."""
    result = daf_registry.import_dimensions(samples_dir / "prep.yaml")
    assert result.status.ok, result
    return daf_registry


@dataclass
class FileFactory:
    """Writes small files for datasets to point at (the datastore stats them)."""

    root: Path

    def __call__(self, name: str, content: bytes = b"payload") -> FileInfo:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return FileInfo(path=str(path), size=len(content))


@pytest.fixture
def files(tmp_path: Path) -> FileFactory:
    """``files("a.fits")`` writes a file and returns its :class:`FileInfo`."""
    return FileFactory(tmp_path / "files")


def dataset(
    file: FileInfo | None,
    *,
    spec: DatasetTypeSpec = VISIT_SUMMARY,
    run: str = HSC_RUN,
    dataset_id: Any = None,
    **data_id: int | str,
) -> DatasetRecord:
    """A dataset record in the HSC sample's universe (visit 330 exists, visit 999 does not)."""
    import uuid

    values: dict[str, int | str] = {"instrument": "HSC", "visit": 330}
    values.update(data_id)
    return DatasetRecord(
        id=dataset_id or uuid.uuid4(),
        dataset_type=spec,
        run=run,
        data_id=values,
        file=file,
    )


# ---------------------------------------------------------------------------------------------
# A private PostgreSQL server, for tests that must stop it


# ---------------------------------------------------------------------------------------------
# Repositories with content made by the real Butler


def open_butler(repo: Path, *, writeable: bool = False) -> Any:
    """A real Butler on ``repo``, opened independently of any adapter."""
    from lsst.daf.butler import Butler

    return Butler.from_config(str(repo), writeable=writeable)


def import_samples(butler: Any, samples_dir: Path) -> None:
    """Load the sample export's HSC records with the real ``Butler.import_``."""
    with pytest.warns(UserWarning, match="day_obs"):
        butler.import_(filename=str(samples_dir / "prep.yaml"))


@dataclass
class ButlerZip:
    """A zip written by the real ``Butler.retrieve_artifacts_zip`` and the refs it holds."""

    path: Path
    refs: list[Any]


@pytest.fixture
def butler_zip(
    make_repo: Callable[..., Path], files: FileFactory, samples_dir: Path, tmp_path: Path
) -> ButlerZip:
    """Four HSC datasets (a visit summary and three calexps) zipped by the real Butler."""
    from lsst.daf.butler import DataCoordinate, DatasetRef, DatasetType, FileDataset

    butler = open_butler(make_repo("zip-source"), writeable=True)
    import_samples(butler, samples_dir)
    universe = butler.dimensions
    summary = DatasetType("visitSummary", ["instrument", "visit"], "ExposureCatalog", universe=universe)
    calexp = DatasetType("calexp", ["instrument", "visit", "detector"], "ExposureF", universe=universe)
    run = "HSC/runs/zipped"
    refs = [
        DatasetRef(
            summary, DataCoordinate.standardize(instrument="HSC", visit=330, universe=universe), run=run
        )
    ]
    refs += [
        DatasetRef(
            calexp,
            DataCoordinate.standardize(instrument="HSC", visit=330, detector=d, universe=universe),
            run=run,
        )
        for d in (0, 1, 2)
    ]
    datasets = [
        FileDataset(path=files(f"zip-src/{ref.datasetType.name}-{index}.json", b"{}").path, refs=[ref])
        for index, ref in enumerate(refs)
    ]
    butler.ingest(*datasets, transfer="copy")
    destination = tmp_path / "zips"
    destination.mkdir()
    zip_path = butler.retrieve_artifacts_zip(refs, destination=str(destination))
    butler.close()
    return ButlerZip(path=Path(zip_path.ospath), refs=refs)


# ---------------------------------------------------------------------------------------------
# Our SQL registry, beside the real Butler


@pytest.fixture
def our_registry(tmp_path: Path, samples_dir: Path) -> Iterator[Any]:
    """Our SQL registry (SQLite) with the sample export's HSC records imported through the interface."""
    from butler_registry import open_registry

    registry = open_registry(f"sqlite:///{tmp_path / 'ours.sqlite3'}", create=True)
    result = registry.import_dimensions(samples_dir / "prep.yaml")
    assert result.status.ok, result
    yield registry
    registry.close()


def exported_datasets(
    registry: Any, butler: Any, tmp_path: Path
) -> dict[Any, tuple[str, str, dict[str, Any]]]:
    """Every dataset of our registry's export, read back by daf_butler's own export reader.

    Returns id → (dataset type, run, data ID as the reader standardized it: required
    values, plus implied ones when the export gave them).
    """
    from lsst.daf.butler.transfers import YamlRepoImportBackend

    export = tmp_path / f"export-{len(list(tmp_path.glob('export-*.yaml')))}.yaml"
    with open(export, "w", encoding="utf-8") as stream:
        registry.export(stream)
    with open(export, encoding="utf-8") as stream:
        backend = YamlRepoImportBackend(stream, butler)
    found: dict[Any, tuple[str, str, dict[str, Any]]] = {}
    for (dataset_type, run), file_datasets in backend.datasets.items():
        for file_dataset in file_datasets:
            for ref in file_dataset.refs:
                found[ref.id] = (dataset_type, run, dict(ref.dataId.mapping))
    return found


# ---------------------------------------------------------------------------------------------
# Butler repositories on the shared PostgreSQL server, cloned from one template


@dataclass(frozen=True)
class PostgresRepoTemplate:
    """An empty Butler registry database made once by ``butler create``, to clone per test."""

    database: str
    config: dict[str, Any]
    """The template repository's ``butler.yaml``."""


def _admin(postgres_url: str) -> str:
    return postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres_repo_template(
    postgres_url: str, formatters: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresRepoTemplate]:
    """One schema-only registry, created by the real ``butler create`` (about 2 s, once per session).

    Made in a separate process so no pooled connection is left on it: PostgreSQL
    refuses to clone a database that someone is connected to.
    """
    import subprocess
    import sys
    import uuid

    import psycopg
    import yaml

    from butler_registry.daf import ensure_btree_gist

    name = f"ingestd_butler_template_{uuid.uuid4().hex[:8]}"
    base = _admin(postgres_url).rsplit("/", 1)[0]
    with psycopg.connect(_admin(postgres_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        ensure_btree_gist(f"{base}/{name}")
        root = tmp_path_factory.mktemp("butler-template")
        seed = root / "seed.yaml"
        seed.write_text(
            yaml.safe_dump({"registry": {"db": f"{base}/{name}"}, "datastore": {"formatters": formatters}})
        )
        completed = subprocess.run(
            [
                str(Path(sys.executable).with_name("butler")),
                "create",
                "--seed-config",
                str(seed),
                str(root / "repo"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
        config = yaml.safe_load((root / "repo" / "butler.yaml").read_text())
        yield PostgresRepoTemplate(database=name, config=config)
    finally:
        with psycopg.connect(_admin(postgres_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_repo(
    postgres_url: str, postgres_repo_template: PostgresRepoTemplate, tmp_path: Path
) -> Iterator[Path]:
    """A fresh, empty Butler repository whose registry is its own PostgreSQL database."""
    import uuid

    import psycopg
    import yaml

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_admin(postgres_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_repo_template.database}"')
    root = tmp_path / "pg-repo"
    root.mkdir()
    config = dict(postgres_repo_template.config)
    config["registry"] = {**config["registry"], "db": f"{_admin(postgres_url).rsplit('/', 1)[0]}/{name}"}
    (root / "butler.yaml").write_text(yaml.safe_dump(config))
    yield root
    with psycopg.connect(_admin(postgres_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
