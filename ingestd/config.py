"""Settings of the ingest daemon: one model per concern, composed into :class:`IngestdSettings`.

Sources, highest priority first:

1. keyword arguments (tests, the CLI's own options);
2. each concern's own environment prefix, e.g. ``INGESTD_REGISTRY_URL``,
   ``INGESTD_BATCHING_MAX_EVENTS``, ``INGESTD_LOG_LEVEL``, ``INGESTD_OPENSEARCH_URLS``;
3. the nested form of the same, ``INGESTD_<SECTION>__<FIELD>`` (the only form for the
   Kafka connection: ``INGESTD_KAFKA__BOOTSTRAP_SERVERS``);
4. the YAML file given with ``--config``;
5. defaults.

The YAML file may be a ctrl_ingestd configuration, unchanged: its keys
(``brokers``, ``group_id``, ``client_id``, ``num_messages``, ``timeout``,
``butler_repo``, ``topics: {NAME: {rucio_prefix, fs_prefix}}``) are translated to
the sections below before validation, so a site can switch daemons without
touching its file; new keys may sit beside the old ones. A relative ``fs_prefix``
in a file is taken relative to that file's folder.

Everything is validated when the settings load. A problem raises
:class:`ConfigurationError` whose message names the file, the field (as a dotted
path) and what is wrong, so an operator can fix it without reading code.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from butler_registry.daf._settings import DafButlerSettings
from ingestd.kafka import KafkaConnection
from ingestd.log import LoggingSettings
from ingestd.rucio_client import RucioSettings
from ingestd.sitemap import SiteMap
from ingestd.work import ButlerKind
from monitoring.opensearch import OpenSearchSettings

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "BatchSettings",
    "ConfigurationError",
    "ConsumerSettings",
    "DeadLetterSettings",
    "HttpSettings",
    "IngestdSettings",
    "LifecycleSettings",
    "PlanningSettings",
    "RegistrySettings",
    "RetrySettings",
    "TopicPrefix",
    "VerificationSettings",
    "load_settings",
    "redact_url",
]

DEFAULT_REGISTRY_URL: Final = "sqlite:///ingestd-registry.sqlite3"
"""The embedded registry used when none is configured: a SQLite file in the working directory."""

_REGISTRY_SCHEMES: Final = ("sqlite", "postgresql", "postgres")
"""URL schemes (before any ``+driver``) that name a registry database rather than a Butler repository."""

_LIBRDKAFKA_REGEX_SPECIALS: Final = frozenset(r".^$|()[]*+?{}\\")


class ConfigurationError(ValueError):
    """The settings cannot be used; the message says which field of which file and why."""


def _split_list(value: Any) -> Any:
    """Accept a comma-separated string (environment form) wherever a list of names is expected."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Section(BaseSettings):
    """Base of the settings sections: unknown keys refused, values frozen after validation."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)


class TopicPrefix(BaseModel):
    """How one topic's Rucio URLs map to local files (an entry of ctrl_ingestd's ``topics`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rucio_prefix: str = Field(
        ...,
        min_length=1,
        title="Rucio URL prefix",
        description="Start of every dst-url carried by the topic; only this leading part is replaced.",
        examples=["root://xrd1:1094//rucio"],
    )
    fs_prefix: str = Field(
        "",
        title="Local prefix",
        description=(
            "What replaces rucio_prefix: an absolute path or a file:// URL (in a YAML file, a relative path "
            "is taken relative to the file). Empty (ctrl_ingestd's default) keeps the Rucio URL's path."
        ),
        examples=["file:///rucio/disks/xrd1/rucio", "/pnfs/in2p3.fr/data/lsst/rucio"],
    )

    @field_validator("fs_prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith("/") or value.startswith("file://")):
            raise ValueError(f"fs_prefix {value!r} must be an absolute path or a file:// URL")
        return value


class ConsumerSettings(_Section):
    """Which topics the daemon consumes and as which group (environment prefix ``INGESTD_CONSUMER_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_CONSUMER_", extra="forbid", frozen=True)

    group_id: str = Field(
        "ingestd",
        min_length=1,
        title="Consumer group",
        description=(
            "Kafka consumer group of the daemon. Daemons sharing it share the partitions; offsets are "
            "committed for it only after the registry has committed."
        ),
        examples=["ingestd-frdf"],
    )
    topics: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        title="Topics",
        description=(
            "Topic names to consume (comma-separated in the environment). A mirrored copy with a source "
            "alias prefix (usdf.NAME) is consumed as well."
        ),
        examples=[["IN2P3_BUTLER_DISK-dp2_prep"], "XRD1-test,XRD2-test"],
    )
    topic_pattern: str | None = Field(
        None,
        title="Topic pattern",
        description=(
            "Regular expression a topic name must match in full (also with a source alias prefix). Use "
            "POSIX extended syntax (no (?...) groups): the Kafka client evaluates it to follow new topics."
        ),
        examples=["IN2P3_.*-dp2_.*"],
    )
    source_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["usdf"],
        title="Mirror source aliases",
        description=(
            "Cluster aliases MirrorMaker 2's default policy puts before mirrored topic names (usdf.NAME); "
            "NAME and ALIAS.NAME are the same topic for subscription and URL mapping."
        ),
        examples=[["usdf"], []],
    )
    max_poll_interval_s: float = Field(
        300.0,
        ge=10,
        le=86_400,
        title="Longest processing time per batch (seconds)",
        description=(
            "librdkafka max.poll.interval.ms: a batch taking longer makes the group reassign the "
            "partitions. The daemon keeps polling while it backs off, so outages do not count."
        ),
    )
    session_timeout_s: float = Field(
        45.0,
        ge=1,
        le=3_600,
        title="Group session timeout (seconds)",
        description="How long the group waits for a silent (crashed) member before reassigning its work.",
    )

    @field_validator("topics", "source_aliases", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9._\-]{1,249}", name):
                raise ValueError(f"topic name {name!r} is not a valid Kafka topic name")
        return list(dict.fromkeys(value))

    @field_validator("source_aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", alias):
                raise ValueError(f"source alias {alias!r} must be a cluster alias without dots")
        return value

    @field_validator("topic_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().removeprefix("^").removesuffix("$")
        if "(?" in value:
            raise ValueError(
                f"topic_pattern {value!r} uses a (?...) group, which the Kafka client's regular "
                "expressions do not support; use plain (...) groups"
            )
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"topic_pattern {value!r} is not a valid regular expression: {error}") from error
        return value


class PlanningSettings(_Section):
    """Which events this site ingests (environment prefix ``INGESTD_PLANNING_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_PLANNING_", extra="forbid", frozen=True)

    event_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["transfer-done"],
        min_length=1,
        title="Event types ingested",
        description="Rucio event types registered; any other type is counted as skipped, never an error.",
        examples=[["transfer-done"]],
    )
    kinds: Annotated[list[ButlerKind], NoDecode] = Field(
        default_factory=lambda: list(ButlerKind),
        min_length=1,
        title="rubin_butler kinds ingested",
        description="Kinds of file registered; events of another kind are skipped.",
        examples=[["data_product", "raw_file", "dim_file", "zip_file"]],
    )
    facility: str | None = Field(
        None,
        title="This Data Facility",
        description=(
            "Name of this facility in the site map; events whose destination RSE belongs to another "
            "facility are skipped. Unset: every destination is accepted."
        ),
        examples=["FrDF"],
    )
    max_event_bytes: int = Field(
        1_048_576,
        ge=1_024,
        le=64 * 1_048_576,
        title="Largest event accepted (bytes)",
        description="Larger records are rejected before parsing (protects memory from a runaway producer).",
    )

    @field_validator("event_types", "kinds", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)


class RegistrySettings(_Section):
    """Where datasets are registered (environment prefix ``INGESTD_REGISTRY_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_REGISTRY_", extra="forbid", frozen=True)

    url: str = Field(
        DEFAULT_REGISTRY_URL,
        min_length=1,
        title="Registry URL",
        description=(
            "SQLAlchemy URL of the registry database: postgresql://user@host:5432/db (psycopg 3) in "
            "production, sqlite:///file for the embedded default. Put the password in password_file."
        ),
        examples=["postgresql://ingestd@db.example.org:5432/butler", DEFAULT_REGISTRY_URL],
    )
    password_file: FilePath | None = Field(
        None,
        title="Database password file",
        description="File whose content (trailing newline stripped) is the database password.",
        examples=["/run/secrets/registry-password"],
    )
    backend: Literal["sql", "daf_butler"] | None = Field(
        None,
        title="Registry implementation",
        description=(
            "sql: this project's registry at url. daf_butler: the real Butler repository of the daf_butler "
            "section. Unset: daf_butler when that section is configured (ctrl_ingestd's butler_repo "
            "naming a repository), sql otherwise."
        ),
        examples=["sql", "daf_butler"],
    )
    create_schema: bool | None = Field(
        None,
        title="Create the schema when missing",
        description=(
            "Create the registry tables on first start. Unset: yes for SQLite (embedded use), no for "
            "PostgreSQL, where `ingestd registry init` is run once by the owner role."
        ),
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        value = value.strip()
        scheme = value.split("://", 1)[0].split("+", 1)[0].lower() if "://" in value else ""
        if scheme not in _REGISTRY_SCHEMES:
            raise ValueError(
                f"registry URL {redact_url(value)!r} must start with sqlite:/// or postgresql://"
            )
        return value

    @model_validator(mode="after")
    def _password_once(self) -> RegistrySettings:
        if self.password_file is not None and urlsplit(self.url).password:
            raise ValueError("give the database password either in the URL or in password_file, not both")
        return self

    @property
    def is_sqlite(self) -> bool:
        """Whether the registry is the embedded SQLite kind."""
        return self.url.lower().startswith("sqlite")

    @property
    def should_create(self) -> bool:
        """Whether to create the schema when it is missing (see :attr:`create_schema`)."""
        return self.is_sqlite if self.create_schema is None else self.create_schema

    def resolved_url(self) -> str:
        """The URL to connect with, the password from ``password_file`` inserted."""
        if self.password_file is None:
            return self.url
        from urllib.parse import quote

        password = Path(self.password_file).read_text().rstrip("\n")
        parts = urlsplit(self.url)
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def display_url(self) -> str:
        """The URL with any password hidden, for logs and ``ingestd check``."""
        return redact_url(self.url)


class DeadLetterSettings(_Section):
    """Dead letters and parked events (environment prefix ``INGESTD_DEAD_LETTERS_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_DEAD_LETTERS_", extra="forbid", frozen=True)

    topic: str = Field(
        "ingestd.dead-letters",
        pattern=r"^[A-Za-z0-9._\-]{1,249}$",
        title="Dead-letter topic",
        description=(
            "Where events that can never succeed as sent go, unchanged, with headers giving the reason, "
            "error class and original position. `ingestd dlq` lists and re-drives them."
        ),
        examples=["ingestd.dead-letters"],
    )
    retry_topic: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._\-]{1,249}$",
        title="Retry (parking) topic",
        description=(
            "Where parked events wait (missing dimension records, file not visible yet); the daemon "
            "consumes it too and retries each event once its not-before time has passed. "
            "Default: <topic>.retry."
        ),
        examples=["ingestd.dead-letters.retry"],
    )
    park_delay_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        title="First retry delay of a parked event (seconds)",
        description="Doubles with every attempt, up to park_delay_max_s.",
    )
    park_delay_max_s: float = Field(
        900.0,
        gt=0,
        le=86_400,
        title="Longest retry delay of a parked event (seconds)",
    )
    park_max_age_s: float = Field(
        86_400.0,
        gt=0,
        le=30 * 86_400,
        title="Longest time an event may stay parked (seconds)",
        description=(
            "Counted from its first attempt; after it the event is dead-lettered with the reason it "
            "was parked, for an operator to look at."
        ),
    )
    park_store: Literal["registry", "retry_topic"] = Field(
        "registry",
        title="Where events waiting for dimension records are parked",
        description=(
            "registry: in the registry database (table ingestd_pending), with what each event waits "
            "for, so the arrival of the records re-drives them at once and `ingestd pending` lists "
            "them; retry_topic: in the retry topic, re-driven on the timer only. The real Butler "
            "(registry.backend daf_butler) always uses the retry topic. Files not visible yet always "
            "wait in the retry topic."
        ),
        examples=["registry"],
    )
    park_poll_interval_s: float = Field(
        2.0,
        gt=0,
        le=600,
        title="How often parked events are checked (seconds)",
        description=(
            "Every this often the daemon re-drives parked events whose records now exist (imported by "
            "another daemon, or by `ingestd registry import`) and those whose retry time has come. "
            "Records imported by this daemon re-drive their events at once."
        ),
    )
    park_lease_s: float = Field(
        30.0,
        ge=5,
        le=3_600,
        title="Re-drive lease of a parked event (seconds)",
        description=(
            "A daemon re-driving parked events holds them this long, so other daemons of the group "
            "leave them alone; a daemon that dies mid-re-drive releases them when it expires."
        ),
    )
    delivery_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Dead-letter delivery wait (seconds)",
        description=(
            "How long to wait for the broker to confirm dead letters before treating the batch as a "
            "transient failure and retrying it (offsets are never committed before confirmation)."
        ),
    )
    create_topics: bool = Field(
        True,
        title="Create the topics",
        description="Create the dead-letter and retry topics at start when they do not exist.",
    )
    partitions: int = Field(3, ge=1, le=1_000, title="Partitions of created topics")
    replication_factor: int = Field(
        1, ge=1, le=10, title="Replication factor of created topics", description="Use 3 in production."
    )
    retention_ms: int = Field(
        30 * 86_400_000,
        ge=3_600_000,
        title="Retention of created topics (ms)",
        description="Dead letters wait for an operator: keep them well beyond the event topics' 6 hours.",
    )
    file: Path = Field(
        Path("ingestd-dead-letters.jsonl"),
        title="Dead-letter file (no Kafka)",
        description=(
            "When no Kafka cluster is configured (replay of a file on a machine without servers), dead "
            "letters and parked events are appended to this JSON-lines file instead, and synced to disk "
            "before the input is acknowledged."
        ),
    )
    redrive_group: str | None = Field(
        None,
        title="Re-drive consumer group",
        description="Consumer group of `ingestd dlq redrive`. Default: <consumer.group_id>.dlq-redrive.",
    )

    @property
    def retry_topic_name(self) -> str:
        """The retry topic, defaulting to ``<topic>.retry``."""
        return self.retry_topic or f"{self.topic}.retry"

    @model_validator(mode="after")
    def _distinct(self) -> DeadLetterSettings:
        if self.retry_topic_name == self.topic:
            raise ValueError("retry_topic must differ from the dead-letter topic")
        if self.park_delay_max_s < self.park_delay_s:
            raise ValueError("park_delay_max_s must be at least park_delay_s")
        return self


class VerificationSettings(_Section):
    """File checks before registration (environment prefix ``INGESTD_VERIFICATION_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_VERIFICATION_", extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        title="Verify files",
        description=(
            "Check that each file exists with the size (and adler32, see checksum) Rucio announced "
            "before registering it. Off: trust Rucio, register at once."
        ),
    )
    checksum: bool = Field(
        True,
        title="Verify checksums",
        description="Also read each file to compare its adler32 (and md5 when announced); costs a full read.",
    )
    not_visible_timeout_s: float = Field(
        3_600.0,
        ge=0,
        le=7 * 86_400,
        title="How long a missing file is waited for (seconds)",
        description=(
            "A file not yet visible (e.g. file-system caches) is parked and retried until this long "
            "after the first attempt, then dead-lettered with error class file_not_visible."
        ),
    )
    workers: int = Field(
        4,
        ge=1,
        le=64,
        title="Parallel file checks",
        description="Threads that stat and checksum files; checksum reads release the interpreter lock.",
    )


class BatchSettings(_Section):
    """How events are grouped (environment prefix ``INGESTD_BATCHING_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_BATCHING_", extra="forbid", frozen=True)

    max_events: int = Field(
        2_000,
        ge=1,
        le=50_000,
        title="Events per batch",
        description=(
            "Most events registered in one registry transaction and committed with one offset commit "
            "(ctrl_ingestd's num_messages). 1,000-5,000 gives the best throughput."
        ),
        examples=[2_000],
    )
    max_wait_s: float = Field(
        0.05,
        gt=0,
        le=60,
        title="Poll timeout (seconds)",
        description=(
            "Longest wait for a batch to fill (ctrl_ingestd's timeout): a partial batch is processed "
            "after this long, so a quiet topic still ingests promptly. A backlog fills whole batches "
            "at once whatever this is; it only decides how long a trickle waits. 50 ms keeps the p99 "
            "from Rucio to the registry under a second at 1,000 events/s (docs/PERFORMANCE.md) for "
            "~20 small transactions a second on a quiet topic."
        ),
        examples=[0.05, 1.0],
    )


class RetrySettings(_Section):
    """Back-off after transient failures (environment prefix ``INGESTD_RETRY_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_RETRY_", extra="forbid", frozen=True)

    initial_backoff_s: float = Field(0.5, gt=0, le=60, title="First back-off (seconds)")
    max_backoff_s: float = Field(
        30.0,
        gt=0,
        le=3_600,
        title="Longest back-off (seconds)",
        description="Cap of the doubling delay between attempts while the registry or broker is away.",
    )
    jitter: float = Field(
        0.2,
        ge=0,
        le=1,
        title="Jitter fraction",
        description="Each delay is randomised by up to this fraction, so daemons do not retry in step.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must be at least initial_backoff_s")
        return self


class HttpSettings(_Section):
    """The health and metrics port (environment prefix ``INGESTD_HTTP_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_HTTP_", extra="forbid", frozen=True)

    enabled: bool = Field(True, title="Serve /healthz, /readyz and /metrics")
    host: str = Field(
        "0.0.0.0",
        title="Listen address",
        description="0.0.0.0 for a container scraped from outside; 127.0.0.1 to keep it local.",
        examples=["0.0.0.0", "127.0.0.1"],
    )
    port: int = Field(8080, ge=0, le=65_535, title="Port", description="0 picks a free port (tests).")


class LifecycleSettings(_Section):
    """Start and stop behaviour (environment prefix ``INGESTD_LIFECYCLE_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_LIFECYCLE_", extra="forbid", frozen=True)

    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Shutdown bound (seconds)",
        description=(
            "After SIGTERM/SIGINT the batch in hand is finished and committed, then clients close; past "
            "this bound the daemon exits anyway (nothing uncommitted is acknowledged, so nothing is lost)."
        ),
    )
    liveness_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3_600,
        title="Liveness timeout (seconds)",
        description=(
            "/healthz fails when the daemon made no progress for this long: no batch acknowledged, no "
            "idle turn with nothing left to read and no back-off slice while a dependency is away (a "
            "hung process, or one that turns without consuming). An outage of Kafka or the registry "
            "keeps it alive and shows on /readyz instead, as a stall after stall_limit_s."
        ),
    )
    stall_limit_s: float = Field(
        120.0,
        ge=10,
        le=3_600,
        title="Stall limit (seconds)",
        description=(
            "/readyz reports 'stalled: no commit for N s with M records lagging' when records wait on the "
            "assigned partitions and nothing was acknowledged for this long."
        ),
    )


_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "ingestd_config_file", default=None
)


class IngestdSettings(BaseSettings):
    """Every setting of the ingest daemon and its commands (environment prefix ``INGESTD_``)."""

    model_config = SettingsConfigDict(
        env_prefix="INGESTD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # INGESTD_KAFKA__BOOTSTRAP_SERVERS=a:9092,b:9092 is a comma list, not JSON.
        enable_decoding=False,
    )

    kafka: KafkaConnection | None = Field(
        None,
        title="Kafka cluster",
        description=(
            "The facility's local Kafka (ctrl_ingestd's brokers and client_id). Required by `run`, "
            "`dlq` and `replay --from-kafka`; a file replay without it writes dead letters to a file."
        ),
    )
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings, title="Consumer and topics")
    topic_prefixes: dict[str, TopicPrefix] = Field(
        default_factory=dict,
        title="URL prefixes per topic",
        description=(
            "ctrl_ingestd's topics table: topic name -> rucio_prefix and fs_prefix. Prefixes per RSE "
            "may also come from the site map."
        ),
    )
    site: SiteMap = Field(
        default_factory=SiteMap, title="Site map", description="Facilities, their RSEs and URL prefixes."
    )
    planning: PlanningSettings = Field(default_factory=PlanningSettings, title="Events ingested")
    registry: RegistrySettings = Field(default_factory=RegistrySettings, title="Registry")
    daf_butler: DafButlerSettings | None = Field(
        None,
        title="Real Butler repository",
        description=(
            "Ingest straight into an existing daf_butler repository (ctrl_ingestd's butler_repo) "
            "instead of the registry database; needs the optional [butler] extra."
        ),
    )
    dead_letters: DeadLetterSettings = Field(default_factory=DeadLetterSettings, title="Dead letters")
    verification: VerificationSettings = Field(default_factory=VerificationSettings, title="Verification")
    batching: BatchSettings = Field(default_factory=BatchSettings, title="Batching")
    retry: RetrySettings = Field(default_factory=RetrySettings, title="Transient-failure back-off")
    http: HttpSettings = Field(default_factory=HttpSettings, title="Health and metrics port")
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings, title="Start and stop")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, title="Logging")
    opensearch: OpenSearchSettings = Field(
        default_factory=OpenSearchSettings, title="OpenSearch event documents"
    )
    rucio: RucioSettings = Field(
        default_factory=RucioSettings,
        title="Rucio REST API",
        description="For `replay --from-rucio` and `reconcile`; unset fields come from rucio.cfg.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init, then each section's own prefix, then nested ``INGESTD_X__Y``, then the YAML file."""
        return (
            init_settings,
            _SectionEnvSource(settings_cls),
            env_settings,
            _YamlFileSource(settings_cls, _CONFIG_FILE.get()),
        )

    @model_validator(mode="after")
    def _consistent(self) -> IngestdSettings:
        if self.registry.backend == "daf_butler" and self.daf_butler is None:
            raise ValueError("registry.backend is daf_butler but no daf_butler.repo (or butler_repo) is set")
        if self.planning.facility is not None:
            self.site.facility(self.planning.facility)  # KeyError naming the known facilities
        return self

    @property
    def uses_daf_butler(self) -> bool:
        """Whether datasets go to the real Butler repository rather than the registry database."""
        backend = self.registry.backend or ("daf_butler" if self.daf_butler is not None else "sql")
        return backend == "daf_butler"

    @property
    def redrive_group(self) -> str:
        """Consumer group of ``ingestd dlq redrive``."""
        return self.dead_letters.redrive_group or f"{self.consumer.group_id}.dlq-redrive"

    def require_kafka(self, command: str) -> KafkaConnection:
        """The Kafka connection, or a :class:`ConfigurationError` saying how to give one."""
        if self.kafka is None:
            raise ConfigurationError(
                f"`ingestd {command}` needs a Kafka cluster: set kafka.bootstrap_servers (or ctrl_ingestd's "
                "brokers) in the config file, or INGESTD_KAFKA__BOOTSTRAP_SERVERS=host:port"
            )
        return self.kafka

    def public_dump(self) -> dict[str, Any]:
        """The settings as plain data with secrets and passwords hidden (``ingestd check``)."""
        data = self.model_dump(mode="json")
        data["registry"]["url"] = self.registry.display_url()
        return data


class _SectionEnvSource(PydanticBaseSettingsSource):
    """Read each section from its own environment prefix (``INGESTD_REGISTRY_URL`` ...).

    pydantic-settings reads only the top-level prefix with nested delimiters
    (``INGESTD_REGISTRY__URL``); the sections' own prefixes are what operators and
    the other services' documentation use, so both forms work.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._sections: dict[str, type[BaseSettings]] = {}
        for name, info in settings_cls.model_fields.items():
            section = _settings_class(info.annotation)
            if section is not None and section.model_config.get("env_prefix"):
                self._sections[name] = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: values are gathered per section in :meth:`__call__`."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, section in self._sections.items():
            found = EnvSettingsSource(section)()
            if found:
                values[name] = found
        return values


def _settings_class(annotation: Any) -> type[BaseSettings] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseSettings):
            return candidate
    return None


class _YamlFileSource(PydanticBaseSettingsSource):
    """The YAML file given with ``--config``, ctrl_ingestd keys translated."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: the whole file is returned by :meth:`__call__`."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        return _resolve_relative_prefixes(translate_legacy(read_yaml(self._path)), self._path.parent)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and the line."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read configuration file {path}: {error.strerror or error}"
        ) from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigurationError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: the top level must be a mapping of settings, not {type(data).__name__}"
        )
    return data


LEGACY_KEYS: Final = frozenset({"brokers", "group_id", "client_id", "num_messages", "timeout", "butler_repo"})
"""Top-level keys of ctrl_ingestd's configuration, translated by :func:`translate_legacy`."""


def translate_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """Translate ctrl_ingestd's keys into this daemon's sections; other keys pass through.

    ===================  ==============================================================
    ctrl_ingestd          here
    ===================  ==============================================================
    ``brokers``           ``kafka.bootstrap_servers``
    ``client_id``         ``kafka.client_id``
    ``group_id``          ``consumer.group_id``
    ``num_messages``      ``batching.max_events``
    ``timeout``           ``batching.max_wait_s``
    ``butler_repo``       ``registry.url`` for a database URL, else ``daf_butler.repo``
    ``topics: {NAME: …}`` ``consumer.topics`` (the names) and ``topic_prefixes`` (the table)
    ===================  ==============================================================

    Raises
    ------
    ConfigurationError
        A legacy key and its new counterpart are both given.
    """
    result: dict[str, Any] = {key: value for key, value in data.items() if key not in LEGACY_KEYS}

    def put(section: str, key: str, value: Any, legacy: str) -> None:
        target = result.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigurationError(f"{section} must be a mapping of settings")
        if key in target:
            raise ConfigurationError(f"both {legacy} (ctrl_ingestd) and {section}.{key} are set; keep one")
        target[key] = value

    if "brokers" in data:
        put("kafka", "bootstrap_servers", data["brokers"], "brokers")
    if "client_id" in data:
        put("kafka", "client_id", data["client_id"], "client_id")
    if "group_id" in data:
        put("consumer", "group_id", data["group_id"], "group_id")
    if "num_messages" in data:
        put("batching", "max_events", data["num_messages"], "num_messages")
    if "timeout" in data:
        put("batching", "max_wait_s", data["timeout"], "timeout")
    if "butler_repo" in data:
        repo = data["butler_repo"]
        if isinstance(repo, str) and _is_registry_url(repo):
            put("registry", "url", repo.strip(), "butler_repo")
        else:
            put("daf_butler", "repo", repo, "butler_repo")
    topics = data.get("topics")
    if isinstance(topics, Mapping):
        result.pop("topics")
        put("consumer", "topics", list(topics), "topics")
        if "topic_prefixes" in result:
            raise ConfigurationError("both topics (ctrl_ingestd table) and topic_prefixes are set; keep one")
        result["topic_prefixes"] = dict(topics)
    elif topics is not None:
        raise ConfigurationError(
            "topics must be ctrl_ingestd's table {NAME: {rucio_prefix, fs_prefix}}; "
            "a plain list of names goes in consumer.topics"
        )
    return result


def _resolve_relative_prefixes(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative ``fs_prefix`` values of a file absolute, relative to the file's folder.

    A configuration shipped with its data (the bundled demo) can then point at a
    folder beside it, wherever it is installed.
    """
    tables: list[Any] = [data.get("topic_prefixes")]
    site = data.get("site")
    if isinstance(site, dict):
        tables.extend(
            facility.get("prefixes")
            for facility in site.get("facilities") or ()
            if isinstance(facility, dict)
        )
    for table in tables:
        if not isinstance(table, dict):
            continue
        for name, entry in table.items():
            if not isinstance(entry, dict):
                continue
            prefix = entry.get("fs_prefix")
            if isinstance(prefix, str) and prefix.strip() and not prefix.startswith(("/", "file://")):
                table[name] = {**entry, "fs_prefix": str((base / prefix).resolve())}
    return data


def _is_registry_url(value: str) -> bool:
    value = value.strip()
    if "://" not in value:
        return False
    return value.split("://", 1)[0].split("+", 1)[0].lower() in _REGISTRY_SCHEMES


def redact_url(url: str) -> str:
    """Hide the password of a URL (``postgresql://user:***@host/db``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def load_settings(config_file: Path | None = None, **overrides: Any) -> IngestdSettings:
    """Load and validate the settings from ``config_file`` (optional) and the environment.

    Parameters
    ----------
    config_file
        YAML file (this daemon's shape, ctrl_ingestd's, or a mix); the environment
        overrides its values.
    **overrides
        Values that win over every source (command-line options).

    Raises
    ------
    ConfigurationError
        With one line per problem: the field as a dotted path, what is wrong, and
        where the settings came from.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"configuration file {config_file} does not exist")
    token = _CONFIG_FILE.set(config_file)
    try:
        return IngestdSettings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(_describe(error, config_file)) from None
    except SettingsError as error:
        cause = f": {error.__cause__}" if error.__cause__ else ""
        raise ConfigurationError(f"invalid INGESTD_* environment variable: {error}{cause}") from None
    except KeyError as error:  # site-map lookups name the known facilities
        origin = f"{config_file}: " if config_file else ""
        raise ConfigurationError(f"{origin}planning.facility: {error.args[0]}") from None
    finally:
        _CONFIG_FILE.reset(token)


def _describe(error: ValidationError, config_file: Path | None) -> str:
    origin = f"configuration file {config_file}" if config_file else "the settings"
    env = sorted(
        name for name in os.environ if name.startswith("INGESTD_") and not name.startswith("INGESTD_TEST")
    )
    lines = [
        f"invalid settings in {origin}" + (f" (environment also sets {', '.join(env)})" if env else "") + ":"
    ]
    for problem in _problems(error):
        lines.append(f"  - {problem}")
    return "\n".join(lines)


def _problems(error: ValidationError) -> Iterator[str]:
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; unknown keys are refused)"
        shown = item.get("input")
        field = str(item["loc"][-1]) if item["loc"] else ""
        if "password" in field or "secret" in field:
            shown = "***"
        elif isinstance(shown, str) and "://" in shown:
            shown = redact_url(shown)
        hidden = item["type"] in ("missing", "extra_forbidden") or isinstance(shown, dict | list)
        value = "" if hidden else f" (got {shown!r})"
        yield f"{location or '<top level>'}: {message}{value}"
