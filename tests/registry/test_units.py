"""Pure logic of the registry, without a database: universe, values, records, batch preparation."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from butler_registry._butler_yaml import ExportFormatError, read_export
from butler_registry._cache import BoundedCache
from butler_registry._dimensions import DataIdChecker, record_references
from butler_registry._prepare import data_id_text, hash_data_id, prepare_batch
from butler_registry._records import (
    RecordError,
    canonical_record,
    data_key,
    export_values,
    records_from_key_value,
    upgrade_export_records,
)
from butler_registry._settings import RegistrySettings
from butler_registry._values import (
    ButlerYamlDumper,
    ButlerYamlLoader,
    Region,
    TaiTime,
    tai_iso_to_nsec,
    tai_nsec_to_iso,
    utc_to_tai_nsec,
)
from butler_registry.interface import DatasetRecord, DatasetTypeSpec, ItemStatus
from butler_registry.universe import ElementKind, UniverseError, default_universe

UNIVERSE = default_universe()


# -- universe -------------------------------------------------------------------------------


def test_universe_is_daf_butler_7_and_8() -> None:
    assert (UNIVERSE.namespace, UNIVERSE.version, UNIVERSE.oldest_compatible_version) == ("daf_butler", 8, 7)
    assert UNIVERSE["visit"].required == ("instrument", "visit")
    assert UNIVERSE["visit"].implied == ("day_obs", "physical_filter")
    assert UNIVERSE["exposure"].implied == ("day_obs", "group", "physical_filter")
    assert UNIVERSE["physical_filter"].implied == ("band",)
    assert UNIVERSE["patch"].required == ("skymap", "tract", "patch")
    assert UNIVERSE["band"].kind is ElementKind.view
    assert UNIVERSE["visit_detector_region"].kind is ElementKind.join_element
    assert UNIVERSE["htm7"].kind is ElementKind.skypix
    assert UNIVERSE["ssp_hypothesis_table"].since == 8
    assert "htm25" not in UNIVERSE
    with pytest.raises(UniverseError):
        UNIVERSE["nebula"]


@pytest.mark.parametrize(
    ("given", "required"),
    [
        (("band", "instrument", "physical_filter", "visit"), ("instrument", "visit")),
        (("instrument", "visit"), ("instrument", "visit")),
        (("visit", "detector"), ("instrument", "detector", "visit")),
        (("instrument", "detector", "exposure"), ("instrument", "detector", "exposure")),
        (("band", "skymap", "tract", "patch"), ("band", "skymap", "tract", "patch")),
        (("htm7",), ("htm7",)),
    ],
)
def test_required_dimensions_of_a_group(given: tuple[str, ...], required: tuple[str, ...]) -> None:
    assert UNIVERSE.required_dimensions(given) == required


def test_dimension_order_is_the_butlers() -> None:
    names = ["visit", "physical_filter", "detector", "day_obs", "instrument", "band"]
    assert UNIVERSE.sorted(names) == ["band", "instrument", "day_obs", "detector", "physical_filter", "visit"]


# -- values and Butler YAML -----------------------------------------------------------------


def test_tai_times_round_trip_to_the_nanosecond() -> None:
    text = "2014-03-25 10:03:47.628000000"
    assert tai_iso_to_nsec(text) == 1_395_741_827_628_000_000  # what daf_butler stores for it
    assert tai_nsec_to_iso(tai_iso_to_nsec(text)) == text
    assert (
        tai_nsec_to_iso(tai_iso_to_nsec("2025-01-13 19:57:30.535000001")) == "2025-01-13 19:57:30.535000001"
    )


def test_utc_to_tai_adds_the_leap_seconds() -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    assert utc_to_tai_nsec(moment) == tai_iso_to_nsec("2020-01-01 00:00:37")


def test_yaml_tags_round_trip() -> None:
    document = {
        "t": TaiTime(tai_iso_to_nsec("2014-03-25 10:03:47.628")),
        "r": Region("70abcdef"),
        "u": uuid.UUID("01a201be-63c5-7593-aa80-4931d8b50fd6"),
    }
    text = yaml.dump(document, Dumper=ButlerYamlDumper)
    assert "!butler_time/tai/iso '2014-03-25 10:03:47.628000000'" in text
    assert "!<lsst.sphgeom.ConvexPolygon>" in text
    assert "!uuid '01a201be-63c5-7593-aa80-4931d8b50fd6'" in text
    assert yaml.load(text, Loader=ButlerYamlLoader) == document


def test_data_key_and_data_id_text_match_json() -> None:
    values: list[int | str] = ["HSC", 330, 'é/"x']
    assert data_key(values) == json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    data_id: dict[str, int | str] = {"instrument": "HSC", "visit": 330}
    assert data_id_text(data_id) == '{"instrument":"HSC","visit":330}'
    assert len(hash_data_id(data_id_text(data_id))) == 16


# -- records --------------------------------------------------------------------------------


def test_canonical_record_keys_types_and_extras() -> None:
    record = canonical_record(
        UNIVERSE,
        "visit",
        {
            "instrument": "HSC",
            "id": 330,
            "physical_filter": "HSC-Y",
            "day_obs": 20140325,
            "exposure_time": 240,
            "region": Region("70aa"),
            "datetime_begin": TaiTime(5),
            "datetime_end": TaiTime(6),
            "brand_new_field": [1, 2],
        },
    )
    assert record.key == '["HSC",330]'
    assert record.describe() == "visit:HSC/330"
    assert record.values["exposure_time"] == 240.0
    assert record.values["region"] == "70aa"
    assert (record.values["datetime_begin"], record.values["datetime_end"]) == (5, 6)
    assert record.values["brand_new_field"] == [1, 2]  # kept, not refused
    exported = export_values(UNIVERSE, record)
    assert "brand_new_field" not in exported  # daf_butler would refuse it
    assert exported["region"] == Region("70aa")
    assert exported["datetime_begin"] == TaiTime(5)


@pytest.mark.parametrize(
    ("element", "raw", "message"),
    [
        ("visit", {"instrument": "HSC"}, "key field 'id'"),
        ("visit", {"instrument": "HSC", "id": "330"}, "must be an integer"),
        ("detector", {"instrument": "HSC", "id": 1, "purpose": 3}, "must be a string"),
        ("nebula", {"id": 1}, "unknown dimension element"),
        ("band", {"name": "y"}, "no records of its own"),
    ],
)
def test_bad_records_are_refused(element: str, raw: dict[str, object], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        canonical_record(UNIVERSE, element, raw)


def test_references_of_records() -> None:
    visit = canonical_record(
        UNIVERSE, "visit", {"instrument": "HSC", "id": 1, "physical_filter": "F", "day_obs": 2}
    )
    assert sorted(record_references(UNIVERSE, visit)) == [
        ("day_obs", '["HSC",2]'),
        ("instrument", '["HSC"]'),
        ("physical_filter", '["HSC","F"]'),
    ]
    region = canonical_record(
        UNIVERSE, "visit_detector_region", {"instrument": "HSC", "detector": 3, "visit": 1}
    )
    assert sorted(record_references(UNIVERSE, region)) == [
        ("detector", '["HSC",3]'),
        ("instrument", '["HSC"]'),
        ("visit", '["HSC",1]'),
    ]


def test_old_exports_are_upgraded_like_butler_import_does() -> None:
    entries = [
        (
            "exposure",
            [{"instrument": "HSC", "id": 1, "group_name": "g1", "group_id": 7, "day_obs": 20140325}],
        ),
        ("visit", [{"instrument": "HSC", "id": 1, "day_obs": 20140325, "visit_system": 0}]),
    ]
    upgraded = dict(upgrade_export_records(UNIVERSE, 1, "daf_butler", entries))
    assert upgraded["exposure"][0]["group"] == "g1"
    assert "group_id" not in upgraded["exposure"][0]
    assert upgraded["group"] == [{"instrument": "HSC", "name": "g1"}]
    assert upgraded["day_obs"] == [{"instrument": "HSC", "id": 20140325}]
    assert upgraded["visit_system_membership"] == [{"instrument": "HSC", "visit_system": 0, "visit": 1}]
    assert dict(upgrade_export_records(UNIVERSE, 7, "daf_butler", entries)) == dict(entries)


def test_compact_records_of_a_zip_index() -> None:
    rows = [
        ["HSC", 330, 20140325, "HSC-Y", "V330", 330, 240.0, "t", "science", "o1", None, 32.3, "70aa", [1, 2]]
    ]
    (record,) = records_from_key_value(UNIVERSE, "visit", rows)
    assert record["physical_filter"] == "HSC-Y"
    assert record["name"] == "V330"
    assert record["timespan"] == [1, 2]
    canonical = canonical_record(UNIVERSE, "visit", record)
    assert (canonical.values["datetime_begin"], canonical.values["datetime_end"]) == (1, 2)
    with pytest.raises(RecordError, match="expects"):
        records_from_key_value(UNIVERSE, "visit", [["HSC", 330]])


def test_read_export_refuses_other_versions(samples_dir: Path) -> None:
    text = (samples_dir / "prep.yaml").read_text()
    contents = read_export(io.StringIO(text), UNIVERSE)
    assert contents.universe_version == 3
    elements = [element for element, _ in contents.records]
    assert "group" in elements
    assert "day_obs" in elements
    with pytest.raises(ExportFormatError, match="cannot be read"):
        read_export(io.StringIO(text.replace("version: 1.0.2", "version: 2.0.0", 1)), UNIVERSE)
    with pytest.raises(ExportFormatError, match="namespace"):
        read_export(
            io.StringIO(text.replace("universe_namespace: daf_butler", "universe_namespace: x")), UNIVERSE
        )


# -- batch preparation and data ID checks ---------------------------------------------------


def _item(
    data_id: dict[str, object], dims: tuple[str, ...] = ("instrument", "visit", "detector")
) -> DatasetRecord:
    return DatasetRecord(uuid.uuid4(), DatasetTypeSpec("calexp", dims, "ExposureF"), "run", data_id)  # type: ignore[arg-type]


def test_prepare_settles_duplicates_and_invalid_items() -> None:
    good = _item({"instrument": "HSC", "visit": 1, "detector": 2, "band": "y"})
    lacking = _item({"instrument": "HSC", "visit": 1})
    same_data_id = _item({"instrument": "HSC", "visit": 1, "detector": 2})
    prepared = prepare_batch(UNIVERSE, [good, lacking, good, same_data_id])
    assert [item.index for item in prepared.items] == [0]
    assert prepared.items[0].given_implied == {"band": "y"}
    assert prepared.items[0].data_id == {"instrument": "HSC", "detector": 2, "visit": 1}
    assert prepared.results[1].status is ItemStatus.invalid
    assert prepared.repeats == {2: 0}
    assert prepared.results[3].status is ItemStatus.conflict


def test_data_id_checker_walks_implied_records() -> None:
    checker = DataIdChecker(UNIVERSE)
    records: dict[tuple[str, str], dict[str, object]] = {
        ("instrument", '["HSC"]'): {},
        ("visit", '["HSC",1]'): {"physical_filter": "HSC-Y", "day_obs": 20140325},
        ("detector", '["HSC",2]'): {},
        ("day_obs", '["HSC",20140325]'): {},
        ("physical_filter", '["HSC","HSC-Y"]'): {"band": "y"},
    }
    asked: list[tuple[str, str]] = []

    def known(key: tuple[str, str]) -> tuple[bool, dict[str, object] | None]:
        asked.append(key)
        return True, records.get(key)

    dims = ("instrument", "detector", "visit")
    required: dict[str, int | str] = {"instrument": "HSC", "detector": 2, "visit": 1}
    assert not checker.check(dims, required, {"band": "y"}, known).mismatches
    assert ("physical_filter", '["HSC","HSC-Y"]') in asked
    wrong = checker.check(dims, required, {"band": "g"}, known)
    assert wrong.mismatches == ["band='g' but physical_filter:HSC/HSC-Y implies band='y'"]
    absent = checker.check(dims, {**required, "visit": 9}, {}, known)
    assert absent.missing == ["visit:HSC/9"]


# -- small pieces ---------------------------------------------------------------------------


def test_bounded_cache_forgets_the_least_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache
    assert len(cache) == 2


def test_settings_validate_and_hide_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t/\n")
    monkeypatch.setenv("INGESTD_REGISTRY_URL", "postgresql://ingest@db:5432/registry")
    monkeypatch.setenv("INGESTD_REGISTRY_PASSWORD_FILE", str(secret))
    settings = RegistrySettings()
    assert settings.resolved_url() == "postgresql://ingest:s3cr3t%2F@db:5432/registry"
    assert "s3cr3t" not in settings.display_url()
    monkeypatch.setenv("INGESTD_REGISTRY_URL", "mysql://db/x")
    with pytest.raises(ValueError, match="not supported"):
        RegistrySettings()
    monkeypatch.delenv("INGESTD_REGISTRY_URL")
    monkeypatch.delenv("INGESTD_REGISTRY_PASSWORD_FILE")
    assert RegistrySettings().url == "sqlite:///ingestd-registry.sqlite3"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("SerializationFailure", "TransientRegistryError"),
        ("DeadlockDetected", "TransientRegistryError"),
        ("AdminShutdown", "TransientRegistryError"),
        ("UndefinedTable", "SchemaVersionError"),
        ("InsufficientPrivilege", "RegistryConfigurationError"),
        ("UniqueViolation", "RegistryError"),
        ("ForeignKeyViolation", "RegistryError"),
    ],
)
def test_driver_errors_are_classified(error: str, expected: str) -> None:
    import psycopg

    from butler_registry._engine import translate_errors

    with pytest.raises(Exception) as caught, translate_errors("testing"):  # noqa: PT011 - type checked below
        raise getattr(psycopg.errors, error)("boom")
    assert type(caught.value).__name__ == expected


def test_sqlite_errors_are_classified() -> None:
    import sqlite3

    from butler_registry._engine import translate_errors
    from butler_registry.interface import RegistryError, SchemaVersionError, TransientRegistryError

    with pytest.raises(TransientRegistryError), translate_errors("testing"):
        raise sqlite3.OperationalError("database is locked")
    with pytest.raises(SchemaVersionError), translate_errors("testing"):
        raise sqlite3.OperationalError("no such table: dataset")
    with pytest.raises(RegistryError) as caught, translate_errors("testing"):
        raise sqlite3.IntegrityError("UNIQUE constraint failed")
    assert not isinstance(caught.value, TransientRegistryError)  # never retried blindly
