"""Settings: ctrl_ingestd compatibility, sources and their priority, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config import (
    DEFAULT_REGISTRY_URL,
    ConfigurationError,
    IngestdSettings,
    load_settings,
    redact_url,
    translate_legacy,
)
from ingestd.sources import TopicSelection

DATA = Path(__file__).parent / "data"
README_YAML = DATA / "ctrl_ingestd_readme.yaml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings tests see only the variables they set (the test bed exports INGESTD_TEST_*)."""
    import os

    for name in list(os.environ):
        if name.startswith("INGESTD_") and not name.startswith("INGESTD_TEST"):
            monkeypatch.delenv(name)


def test_ctrl_ingestd_readme_file_loads_unchanged() -> None:
    settings = load_settings(README_YAML)
    assert settings.kafka is not None
    assert settings.kafka.bootstrap_servers == ["kafka:9092"]
    assert settings.consumer.group_id == "my_test_group"
    assert settings.batching.max_events == 100
    assert settings.batching.max_wait_s == 5.0
    assert settings.consumer.topics == ["XRD1-test", "XRD2-test"]
    assert settings.topic_prefixes["XRD1-test"].rucio_prefix == "root://xrd1:1094//rucio"
    assert settings.topic_prefixes["XRD2-test"].fs_prefix == "file:///rucio/disks/xrd2/rucio"
    # butler_repo names a Butler repository (a path), so the real Butler is the registry.
    assert settings.daf_butler is not None
    assert settings.daf_butler.repo == "/tmp/repo"
    assert settings.uses_daf_butler


def test_ctrl_ingestd_file_with_our_registry_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_REGISTRY_URL", "postgresql://ingest:secret@db.example.org:5432/butler")
    monkeypatch.setenv("INGESTD_REGISTRY_BACKEND", "sql")
    settings = load_settings(README_YAML)
    assert not settings.uses_daf_butler
    assert settings.registry.url.endswith("/butler")
    assert "secret" not in settings.registry.display_url()
    assert "secret" not in str(settings.public_dump())


def test_butler_repo_database_url_becomes_registry_url(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "brokers: [kafka:9092]\ngroup_id: g\nbutler_repo: postgresql://u@h:5432/reg\n"
        "topics:\n  A-x:\n    rucio_prefix: root://a//r\n"
    )
    settings = load_settings(config)
    assert settings.registry.url == "postgresql://u@h:5432/reg"
    assert settings.daf_butler is None
    assert not settings.uses_daf_butler


def test_defaults_without_any_file() -> None:
    settings = load_settings(None)
    assert settings.kafka is None
    assert settings.registry.url == DEFAULT_REGISTRY_URL
    assert settings.registry.should_create  # embedded SQLite creates its schema
    assert settings.dead_letters.retry_topic_name == "ingestd.dead-letters.retry"
    assert settings.redrive_group == "ingestd.dlq-redrive"


def test_environment_overrides_file_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_BATCHING_MAX_EVENTS", "3000")
    monkeypatch.setenv("INGESTD_CONSUMER__GROUP_ID", "from-env")
    monkeypatch.setenv("INGESTD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    monkeypatch.setenv("INGESTD_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("INGESTD_CONSUMER_TOPICS", "A-x,usdf.B-y")
    settings = load_settings(README_YAML)
    assert settings.batching.max_events == 3000
    assert settings.batching.max_wait_s == 5.0  # still from the file
    assert settings.consumer.group_id == "from-env"
    assert settings.kafka is not None
    assert settings.kafka.bootstrap_servers == ["127.0.0.1:29092"]
    assert settings.logging.level == "DEBUG"
    assert settings.consumer.topics == ["A-x", "usdf.B-y"]


def test_section_prefix_beats_nested_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_REGISTRY__URL", "sqlite:///nested.sqlite3")
    monkeypatch.setenv("INGESTD_REGISTRY_URL", "sqlite:///section.sqlite3")
    assert load_settings(None).registry.url == "sqlite:///section.sqlite3"


def test_keyword_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_REGISTRY_URL", "sqlite:///env.sqlite3")
    settings = load_settings(None, registry={"url": "sqlite:///cli.sqlite3"})
    assert settings.registry.url == "sqlite:///cli.sqlite3"


def test_unknown_key_names_field_and_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("batching:\n  max_evnts: 10\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert str(config) in message
    assert "batching.max_evnts" in message
    assert "unknown setting" in message


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("brokers: [kafka:9092]\nnum_messages: lots\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert "batching.max_events" in str(caught.value)
    assert "'lots'" in str(caught.value)


def test_password_never_echoed(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("registry:\n  url: mysql://u:hunter2@h/db\n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    assert "hunter2" not in str(caught.value)
    assert "registry.url" in str(caught.value)


def test_legacy_and_new_key_together_refused(tmp_path: Path) -> None:
    config = tmp_path / "both.yaml"
    config.write_text("group_id: a\nconsumer:\n  group_id: b\n")
    with pytest.raises(ConfigurationError, match=r"group_id .*consumer\.group_id"):
        load_settings(config)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("brokers: [kafka:9092\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigurationError, match="top level must be a mapping"):
        load_settings(listing)


def test_relative_fs_prefix_is_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = folder / "demo.yaml"
    config.write_text(
        "topic_prefixes:\n  XRD5-test:\n    rucio_prefix: root://xrd5:1098//rucio\n    fs_prefix: data\n"
    )
    settings = load_settings(config)
    assert settings.topic_prefixes["XRD5-test"].fs_prefix == str((folder / "data").resolve())


def test_security_protocols_validated(tmp_path: Path) -> None:
    config = tmp_path / "sasl.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: [k:9093]\n  security:\n    protocol: SASL_SSL\n    username: u\n"
    )
    with pytest.raises(ConfigurationError, match="exactly one of password or password_file"):
        load_settings(config)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config.write_text(
        "kafka:\n  bootstrap_servers: [k:9093]\n  security:\n    protocol: SASL_SSL\n    username: u\n"
        f"    password_file: {secret}\n"
    )
    settings = load_settings(config)
    assert settings.kafka is not None
    assert settings.kafka.client_config()["sasl.password"] == "s3cret"
    assert "s3cret" not in str(settings.public_dump())


def test_registry_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss/word\n")
    settings = load_settings(
        None, registry={"url": "postgresql://ingest@db:5432/reg", "password_file": str(secret)}
    )
    assert settings.registry.resolved_url() == "postgresql://ingest:p%40ss%2Fword@db:5432/reg"
    assert not settings.registry.should_create
    with pytest.raises(ConfigurationError, match="either in the URL or in password_file"):
        load_settings(None, registry={"url": "postgresql://i:x@db/reg", "password_file": str(secret)})


def test_unknown_facility_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="FrDF"):
        load_settings(
            None,
            site={"facilities": [{"name": "FrDF", "rses": ["IN2P3_.*"]}]},
            planning={"facility": "UKDF"},
        )


def test_topic_pattern_rejects_perl_groups() -> None:
    with pytest.raises(ConfigurationError, match=r"\(\?\.\.\.\) group"):
        load_settings(None, consumer={"topic_pattern": "(?:A|B)-x"})


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_url("sqlite:///x.sqlite3") == "sqlite:///x.sqlite3"


def test_translate_legacy_keeps_new_keys() -> None:
    data = translate_legacy(
        {"brokers": ["k:1"], "http": {"port": 9}, "topics": {"T": {"rucio_prefix": "root://h//r"}}}
    )
    assert data == {
        "http": {"port": 9},
        "kafka": {"bootstrap_servers": ["k:1"]},
        "consumer": {"topics": ["T"]},
        "topic_prefixes": {"T": {"rucio_prefix": "root://h//r"}},
    }


def test_settings_model_documents_every_field() -> None:
    """Every field of every section has a title (the docs and `check` rely on it)."""
    missing = []
    for name, info in IngestdSettings.model_fields.items():
        if not info.title:
            missing.append(name)
        section = info.annotation
        for candidate in getattr(section, "__args__", (section,)):
            fields = getattr(candidate, "model_fields", None)
            if fields is None or candidate.__module__ != "ingestd.config":
                continue
            missing.extend(f"{name}.{field}" for field, sub in fields.items() if not sub.title)
    assert not missing


class TestTopicSelection:
    def test_explicit_names_match_with_and_without_alias(self) -> None:
        selection = TopicSelection(topics=("XRD1-test", "IN2P3_BUTLER_DISK-dp2_prep"), aliases=("usdf",))
        assert selection.matches("XRD1-test")
        assert selection.matches("usdf.XRD1-test")
        assert selection.matches("IN2P3_BUTLER_DISK-dp2_prep")
        assert not selection.matches("XRD1-test2")
        assert not selection.matches("other.XRD1-test")
        assert not selection.matches("XRD1Xtest")  # '-' and '.' are literal
        assert selection.canonical("usdf.XRD1-test") == "XRD1-test"
        assert selection.regex.startswith("^")

    def test_pattern_and_extra_topics(self) -> None:
        selection = TopicSelection(
            pattern="IN2P3_.*-dp2_.*", aliases=("usdf",), extra_topics=("ingestd.dl.retry",)
        )
        assert selection.matches("IN2P3_BUTLER_DISK-dp2_prep")
        assert selection.matches("usdf.IN2P3_BUTLER_DISK-dp2_prep")
        assert selection.matches("ingestd.dl.retry")
        assert not selection.matches("usdf.ingestd.dl.retry")
        assert selection.select(["__consumer_offsets", "IN2P3_X-dp2_a", "RAL_X-dp2_a"]) == ["IN2P3_X-dp2_a"]

    def test_empty_selection_refused(self) -> None:
        with pytest.raises(ValueError, match="needs topics"):
            TopicSelection()


def test_samples_demo_config_loads_if_bundled() -> None:
    """The bundled demo settings (ingestd/samples/demo.yaml) load and need no server."""
    from importlib.resources import files

    demo = Path(str(files("ingestd") / "samples" / "demo.yaml"))
    assert demo.is_file(), "the bundled demo configuration is missing"
    settings = load_settings(demo)
    assert settings.kafka is None
    assert settings.topic_prefixes or settings.site.facilities
