"""The publisher's settings: one validated model, read from a YAML file and the environment.

Environment variables start with ``INGESTD_PUBLISHER_``; nested fields use ``__``
(``INGESTD_PUBLISHER_KAFKA__BOOTSTRAP_SERVERS=host:9092``,
``INGESTD_PUBLISHER_DATABASE__URL=postgresql://...``). Lists accept a
comma-separated string (``INGESTD_PUBLISHER_DATABASE__EVENT_TYPES=transfer-done,
transfer-failed``). A YAML file given with ``ingestd publish --config`` supplies the
same keys; the environment wins over the file, so secrets can stay out of it.

Everything is checked when the settings load: the site map is read and validated,
the mode's own section must be present, combinations that cannot work are refused
with the field to fix.
"""

from __future__ import annotations

import json
import os
import socket
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ingestd.kafka import KafkaConnection
from ingestd.sitemap import SiteMap

__all__ = [
    "DatabaseSourceSettings",
    "MetadataSettings",
    "MetadataSourceKind",
    "PublisherSettings",
    "RouteSettings",
    "TopicSettings",
    "load_publisher_settings",
]

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("publisher_config_file", default=None)


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            return json.loads(stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSourceSettings(_Section):
    """Where Rucio's ``messages`` table is and which of its rows are ours."""

    url: SecretStr = Field(
        ...,
        title="Rucio database URL",
        description=(
            "SQLAlchemy URL of Rucio's database (the [database] default of rucio.cfg). "
            "postgresql:// means psycopg 3. Put the password in password_file rather than here."
        ),
        examples=["postgresql://rucio@rucio-db.example.org:5432/rucio"],
    )
    password_file: FilePath | None = Field(
        None,
        title="Database password file",
        description="File whose content (trailing newline stripped) is the password; e.g. a mounted Secret.",
        examples=["/run/secrets/rucio-db-password"],
    )
    db_schema: str | None = Field(
        None,
        title="Rucio schema",
        description="The [database] schema of rucio.cfg, when Rucio's tables live in a named schema.",
        examples=["rucio"],
    )
    services: list[str] | None = Field(
        default_factory=lambda: ["kafka"],
        title="Hermes services",
        description=(
            "Only rows whose services column is one of these are claimed ([hermes] services_list writes "
            "one row per service). null claims rows of every service: only when no other Hermes "
            "instance reads the table."
        ),
        examples=[["kafka"], ["activemq"], None],
    )

    @field_validator("services", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "*"):
            return None
        return _comma_list(value)

    @field_validator("url")
    @classmethod
    def _parse_url(cls, value: SecretStr) -> SecretStr:
        try:
            make_url(value.get_secret_value())
        except ArgumentError as error:
            raise ValueError(f"database url is not a SQLAlchemy URL: {error}") from None
        return value

    def sqlalchemy_url(self) -> URL:
        """The URL to connect with, password from the file when one is configured."""
        url = make_url(self.url.get_secret_value())
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        if self.password_file is not None:
            url = url.set(password=Path(self.password_file).read_text().rstrip("\n"))
        return url


class MetadataSourceKind(StrEnum):
    """Where the Rubin keys come from when a payload lacks them."""

    database = "database"
    """Rucio's ``did_meta`` table, one query per batch (the default: the publisher reads that database)."""
    rest = "rest"
    """Rucio's REST API through rucio-clients (``get_metadata_bulk``), one call per chunk of DIDs."""
    none = "none"
    """No lookup: publish payloads as they are."""


class MetadataSettings(_Section):
    """How events are completed with DID metadata (``rubin_butler``, ``rubin_sidecar``)."""

    source: MetadataSourceKind = Field(
        MetadataSourceKind.database,
        title="Metadata source",
        description="database (Rucio's did_meta), rest (rucio-clients, for route mode without database "
        "access) or none.",
    )
    keys: list[str] = Field(
        default_factory=lambda: ["rubin_butler", "rubin_sidecar"],
        title="Metadata keys",
        description="Keys copied from the DID metadata into the payload when the payload lacks them.",
    )
    rest_chunk_size: int = Field(
        500,
        ge=1,
        le=10_000,
        title="REST chunk size",
        description="DIDs per get_metadata_bulk call in rest mode.",
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)


class TopicSettings(_Section):
    """How topics the publisher creates on demand are configured."""

    create: bool = Field(
        True,
        title="Create topics",
        description="Create a destination topic the first time an event needs it; false where an "
        "operator (or Strimzi KafkaTopic resources) manages topics.",
    )
    partitions: int = Field(3, ge=1, le=10_000, title="Partitions", description="USDF uses 3.")
    replication_factor: int = Field(
        -1,
        ge=-1,
        title="Replication factor",
        description="-1 takes the broker's default.replication.factor; USDF uses 2.",
        examples=[2, -1],
    )
    retention_ms: int | None = Field(
        None,
        ge=-1,
        title="Retention (ms)",
        description="retention.ms of created topics; null keeps the broker default. USDF keeps 6 hours.",
        examples=[21_600_000],
    )
    config: dict[str, str] = Field(
        default_factory=dict,
        title="Extra topic configuration",
        description="Other topic-level settings for created topics, e.g. min.insync.replicas.",
        examples=[{"min.insync.replicas": "2"}],
    )

    @model_validator(mode="after")
    def _replication_positive(self) -> TopicSettings:
        if self.replication_factor == 0:
            raise ValueError("topics.replication_factor must be -1 (broker default) or at least 1")
        return self

    def topic_config(self) -> dict[str, str]:
        """Topic-level configuration applied when a topic is created."""
        config = dict(self.config)
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config


class RouteSettings(_Section):
    """Route mode: read one raw Hermes topic and fan its events out to facility topics."""

    source_topic: str = Field(
        ...,
        min_length=1,
        title="Source topic",
        description="The topic a Hermes instance writes every event to.",
        examples=["rucio.hermes.raw"],
    )
    group_id: str = Field(
        "ingestd-publisher-route",
        min_length=1,
        title="Consumer group",
        description="Consumer group of the router; instances sharing it share the source partitions.",
    )


class PublisherSettings(BaseSettings):
    """Settings of ``ingestd publish`` (environment prefix ``INGESTD_PUBLISHER_``)."""

    model_config = SettingsConfigDict(
        env_prefix="INGESTD_PUBLISHER_",
        env_nested_delimiter="__",
        extra="forbid",
        enable_decoding=False,
        validate_default=True,
    )

    kafka: KafkaConnection = Field(
        ...,
        title="Kafka cluster",
        description="The central (USDF) cluster the facility topics live on.",
    )
    database: DatabaseSourceSettings | None = Field(
        None,
        title="Rucio database",
        description="Required to publish from Rucio's messages table, and for the database metadata source.",
    )
    route: RouteSettings | None = Field(
        None,
        title="Route mode",
        description="Required for ingestd publish --route.",
    )
    site_map: SiteMap | None = Field(
        None,
        title="Site map (inline)",
        description="RSE -> facility -> topic rules; give this or site_map_file.",
    )
    site_map_file: FilePath | None = Field(
        None,
        title="Site map file",
        description="YAML file holding the site map (top level, or under a site_map key of a site file).",
        examples=["/etc/ingestd/sites.yaml"],
    )
    event_types: list[str] = Field(
        default_factory=lambda: ["transfer-done"],
        min_length=1,
        title="Event types",
        description=(
            "Events of these types are published (rows claimed, records forwarded); others are left alone."
        ),
        examples=[["transfer-done"], ["transfer-done", "transfer-failed", "deletion-done"]],
    )
    topics: TopicSettings = Field(default_factory=TopicSettings, title="Created topics")
    metadata: MetadataSettings = Field(default_factory=MetadataSettings, title="DID metadata")
    batch_size: int = Field(
        10_000,
        ge=1,
        le=50_000,
        title="Batch size",
        description=(
            "Most rows claimed (or records consumed) and published per transaction; a trickle is "
            "published as it comes whatever this is. The rows of a claim are held in memory and "
            "locked until Kafka confirms them; 10,000 keeps a claim under a second of work."
        ),
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=300,
        title="Poll interval (s)",
        description=(
            "Sleep between polls when there is nothing to publish. Right after a large backlog, until "
            "autovacuum has cleaned Rucio's messages table, finding it empty costs a scan: polls are "
            "then spaced by three times that scan's duration."
        ),
    )
    delivery_timeout_s: float = Field(
        30.0,
        gt=0,
        le=900,
        title="Delivery timeout (s)",
        description=(
            "How long Kafka may take to confirm a batch (librdkafka message.timeout.ms) before its rows "
            "stay for a later try. Rows stay locked meanwhile: keep it below the database's "
            "idle_in_transaction_session_timeout."
        ),
    )
    max_backoff_s: float = Field(
        30.0, gt=0, le=3600, title="Longest back-off (s)", description="Cap of the retry back-off."
    )
    backlog_interval_s: float = Field(
        5.0,
        gt=0,
        title="Backlog refresh (s)",
        description=(
            "How often the backlog and oldest-message-age gauges are refreshed. Counting scans Rucio's "
            "whole messages table, so with a large backlog the counts are spaced further (never more "
            "than 2 % of the time)."
        ),
    )
    http_host: str = Field(
        "0.0.0.0",
        title="Health/metrics address",
        description="Address of /healthz, /readyz and /metrics.",
        examples=["0.0.0.0", "127.0.0.1"],
    )
    http_port: int | None = Field(
        8080,
        ge=0,
        le=65535,
        title="Health/metrics port",
        description="0 picks a free port; null disables the endpoint.",
    )
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        min_length=1,
        title="Instance id",
        description="Names this publisher in Kafka client ids and record headers.",
    )

    _site_map: SiteMap | None = PrivateAttr(None)

    @field_validator("event_types", mode="before")
    @classmethod
    def _split_types(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("site_map", mode="before")
    @classmethod
    def _inline_document(cls, value: Any) -> Any:
        if isinstance(value, str):
            return yaml.safe_load(value)  # JSON is YAML too
        return value

    @model_validator(mode="after")
    def _one_site_map(self) -> PublisherSettings:
        if (self.site_map is None) == (self.site_map_file is None):
            raise ValueError("give exactly one of site_map (inline) and site_map_file")
        if self.site_map is not None:
            self._site_map = self.site_map
        else:
            assert self.site_map_file is not None
            self._site_map = _read_site_map(Path(self.site_map_file))
        return self

    @property
    def resolved_site_map(self) -> SiteMap:
        """The site map, read from site_map_file when that is how it was given."""
        assert self._site_map is not None  # set by the validator
        return self._site_map

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the ``--config`` YAML file (lowest)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _read_site_map(path: Path) -> SiteMap:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"site_map_file {path}: cannot be read as YAML: {error}") from None
    if isinstance(document, dict) and "site_map" in document:
        document = document["site_map"]
    if not isinstance(document, dict):
        raise ValueError(f"site_map_file {path}: expected a mapping with facilities, got {type(document)}")
    try:
        return SiteMap.model_validate(document)
    except ValidationError as error:
        raise ValueError(f"site_map_file {path}: {error}") from None


def load_publisher_settings(config_file: Path | None = None, **overrides: Any) -> PublisherSettings:
    """Load the settings from the environment and, when given, a YAML file (the environment wins).

    Raises
    ------
    pydantic.ValidationError
        Naming each field at fault; the CLI prints it and exits with status 2.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"publisher configuration file {config_file} does not exist")
    token = _CONFIG_FILE.set(config_file)
    try:
        return PublisherSettings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)
