"""Pure logic of the mirror, without servers: naming, selection, settings, provenance."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import mirror
from ingestd.sitemap import SiteMap
from mirror import (
    MM2_DEFAULT_EXCLUDES,
    MirrorConfigError,
    MirrorSettings,
    Provenance,
    ReplicationPolicy,
    TopicNaming,
    TopicSelector,
    load_mirror_settings,
)
from mirror._headers import partition_headers

CENTRAL = {"bootstrap_servers": "central:9092"}
LOCAL = {"bootstrap_servers": "local:9092"}


def test_exported_members_are_complete() -> None:
    public = {name for name in dir(mirror) if not name.startswith("_") and name[0].isupper()}
    assert public <= set(mirror.__all__)


@pytest.mark.parametrize(
    ("policy", "alias", "separator", "source", "target"),
    [
        (ReplicationPolicy.identity, "usdf", ".", "IN2P3_BUTLER_DISK-dp2_prep", "IN2P3_BUTLER_DISK-dp2_prep"),
        (ReplicationPolicy.prefix, "usdf", ".", "RAL_BUTLER_DISK-dc2", "usdf.RAL_BUTLER_DISK-dc2"),
        (ReplicationPolicy.prefix, "usdf", "_", "x", "usdf_x"),
    ],
)
def test_naming_matches_mirrormaker2(
    policy: ReplicationPolicy, alias: str, separator: str, source: str, target: str
) -> None:
    """Identity keeps names (FrDF); prefix is MM2's DefaultReplicationPolicy (RAL's usdf.X)."""
    assert TopicNaming(policy, alias, separator).target_topic(source) == target


def test_policy_maps_to_the_mm2_classes() -> None:
    assert ReplicationPolicy.identity.mm2_class.endswith(".IdentityReplicationPolicy")
    assert ReplicationPolicy.prefix.mm2_class.endswith(".DefaultReplicationPolicy")


def test_selector_names_patterns_and_exclusions() -> None:
    selector = TopicSelector(names=frozenset({"a-b.c"}), patterns=("IN2P3_.*",))
    assert selector.matches("a-b.c")
    assert not selector.matches("a-b.cd")  # names are exact
    assert selector.matches("IN2P3_BUTLER_DISK-dp2")
    assert not selector.matches("xIN2P3_")  # patterns are full-match
    for internal in ("__consumer_offsets", "mm2-offsets.usdf.internal", "IN2P3_x.replica"):
        assert not selector.matches(internal)  # MirrorMaker 2's exclusions win
    assert selector.select(["IN2P3_b", "z", "a-b.c", "IN2P3_a"]) == ["IN2P3_a", "IN2P3_b", "a-b.c"]
    # Escaped names work as regexes too (that is what MirrorMaker 2 receives).
    assert [re.fullmatch(p, "a-b.c") is not None for p in selector.include_patterns()] == [True, False]
    assert not TopicSelector(names=frozenset({"a"}), exclude=()).matches("b")


def test_facility_selection_follows_the_site_map(tmp_path: Path) -> None:
    site_map = {
        "facilities": [
            {"name": "FrDF", "rses": ["IN2P3_.*"]},
            {"name": "UKDF", "rses": ["RAL_.*", "LANCS_.*"], "topic": "rucio.transfers.{facility}"},
        ]
    }
    path = tmp_path / "sitemap.yaml"
    path.write_text(yaml.safe_dump(site_map))
    frdf = MirrorSettings(source=CENTRAL, target=LOCAL, selection={"facility": "FrDF", "site_map_file": path})
    selector = frdf.selection.selector()
    assert selector.matches("IN2P3_BUTLER_DISK-dp2_prep")
    assert not selector.matches("RAL_BUTLER_DISK-dp2_prep")
    assert selector.patterns == (SiteMap.model_validate(site_map).topic_regex("FrDF").pattern,)
    ukdf = MirrorSettings(source=CENTRAL, target=LOCAL, selection={"facility": "UKDF", "site_map": site_map})
    assert ukdf.selection.selector().select(["rucio.transfers.UKDF", "rucio.transfers.FrDF"]) == [
        "rucio.transfers.UKDF"
    ]


@pytest.mark.parametrize(
    ("selection", "complaint"),
    [
        ({}, "at least one of topics, patterns or facility"),
        ({"patterns": ["(unclosed"]}, "not a valid regular expression"),
        ({"facility": "FrDF"}, "needs site_map or site_map_file"),
        ({"facility": "Nowhere", "site_map": {"facilities": []}}, "no facility 'Nowhere'"),
        ({"topics": ["a"], "unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_selection_errors_name_the_problem(selection: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(complaint)):
        MirrorSettings(source=CENTRAL, target=LOCAL, selection=selection)


def test_identity_onto_the_same_cluster_is_refused() -> None:
    with pytest.raises(ValidationError, match="copy topics onto themselves"):
        MirrorSettings(source=CENTRAL, target=CENTRAL, selection={"topics": ["a"]})
    # The prefix policy makes it a legitimate (if unusual) copy.
    MirrorSettings(source=CENTRAL, target=CENTRAL, selection={"topics": ["a"]}, policy="prefix")


def test_defaults_and_derived_names() -> None:
    settings = MirrorSettings(source=CENTRAL, target=LOCAL, selection={"topics": ["a"]}, instance="mirror-0")
    assert settings.policy is ReplicationPolicy.identity
    assert settings.effective_group_id == "ingestd-mirror.usdf"
    assert settings.transactional_id == "ingestd-mirror.usdf.mirror-0"
    assert settings.selection.exclude == list(MM2_DEFAULT_EXCLUDES)
    assert settings.target_retention_ms == 7 * 24 * 3600 * 1000


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML file gives the settings, INGESTD_MIRROR_* variables override single fields, nested too."""
    config = tmp_path / "mirror.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"bootstrap_servers": ["central:9092"], "client_id": "from-file"},
                "target": LOCAL,
                "selection": {"topics": ["a"]},
                "policy": "prefix",
                "batch_max_records": 10,
            }
        )
    )
    monkeypatch.setenv("INGESTD_MIRROR_SOURCE__BOOTSTRAP_SERVERS", "c1:9092,c2:9092")
    monkeypatch.setenv("INGESTD_MIRROR_BATCH_MAX_RECORDS", "99")
    monkeypatch.setenv("INGESTD_MIRROR_SELECTION__PATTERNS", '["b.*"]')
    settings = load_mirror_settings(config)
    assert isinstance(settings, MirrorSettings)
    assert settings.source.bootstrap_servers == ["c1:9092", "c2:9092"]
    assert settings.source.client_id == "from-file"
    assert settings.batch_max_records == 99
    assert settings.policy is ReplicationPolicy.prefix
    assert settings.selection.topics == ["a"]
    assert settings.selection.patterns == ["b.*"]
    # Other loads are not affected by the file.
    monkeypatch.delenv("INGESTD_MIRROR_SOURCE__BOOTSTRAP_SERVERS")
    with pytest.raises(ValidationError):
        MirrorSettings()


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorConfigError, match="does not exist"):
        load_mirror_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [unclosed")
    with pytest.raises(MirrorConfigError, match="cannot read"):
        load_mirror_settings(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        yaml.safe_dump({"source": CENTRAL, "target": LOCAL, "selection": {"topics": ["a"]}, "x": 1})
    )
    with pytest.raises(ValidationError, match="Extra inputs"):
        load_mirror_settings(unknown)


def test_provenance_round_trip() -> None:
    headers = [("own", b"1"), *partition_headers("usdf", "X", 2), ("ingestd.mirror.source_offset", b"41")]
    assert Provenance.from_headers(headers) == Provenance("usdf", "X", 2, 41)
    assert Provenance.from_headers([("own", b"1")]) is None
    assert Provenance.from_headers(None) is None
