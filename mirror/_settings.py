"""The mirror's settings: one validated model, environment prefix ``INGESTD_MIRROR_``.

Loaded once by the CLI from a YAML file and/or the environment (environment
wins; nested fields use ``__``, e.g. ``INGESTD_MIRROR_SOURCE__BOOTSTRAP_SERVERS``),
then passed down. Everything an operator can get wrong is checked here, at
start-up, with a message naming the field: an unknown key, a regex that does not
compile, a facility missing from the site map, source and target being the same
cluster under identity naming (a replication loop).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ingestd.kafka import KafkaConnection
from ingestd.sitemap import SiteMap

from ._errors import MirrorConfigError
from ._policy import ReplicationPolicy, TopicNaming
from ._selection import MM2_DEFAULT_EXCLUDES, TopicSelector

__all__ = ["Compression", "InitialPosition", "MirrorSettings", "TopicSelection", "load_mirror_settings"]

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
InitialPosition = Literal["earliest", "latest"]

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_ID_PATTERN = r"^[A-Za-z0-9._-]+$"


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from error
    return patterns


class TopicSelection(BaseModel):
    """Which source topics to mirror: names, regexes and/or a facility of the site map (their union)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[str] = Field(
        default_factory=list,
        title="Topic names",
        description="Source topics mirrored by exact name.",
        examples=[["IN2P3_BUTLER_DISK-dp2_prep"]],
    )
    patterns: list[str] = Field(
        default_factory=list,
        title="Topic patterns",
        description="Full-match regular expressions of further source topics (keep to the Java-compatible "
        "subset, and no commas, if the same settings also render a MirrorMaker 2 configuration).",
        examples=[["IN2P3_.*-dp2_.*"]],
    )
    facility: str | None = Field(
        None,
        title="Facility",
        description="Mirror every topic that can carry this facility's events, derived from the site map "
        "(its RSE patterns in the topic template); needs site_map or site_map_file.",
        examples=["FrDF"],
    )
    site_map: SiteMap | None = Field(None, title="Site map", description="The site map, inline.")
    site_map_file: FilePath | None = Field(
        None,
        title="Site map file",
        description="YAML file holding the site map (the same file the publisher and daemon read).",
        examples=["/etc/ingestd/sitemap.yaml"],
    )
    exclude: list[str] = Field(
        default_factory=lambda: list(MM2_DEFAULT_EXCLUDES),
        title="Excluded patterns",
        description="Full-match regular expressions of topics never mirrored; MirrorMaker 2's defaults "
        "(internal topics) unless set.",
    )

    _check_patterns = field_validator("patterns", "exclude")(_check_regexes)

    @model_validator(mode="after")
    def _coherent(self) -> TopicSelection:
        if not (self.topics or self.patterns or self.facility):
            raise ValueError("select at least one of topics, patterns or facility")
        if self.site_map is not None and self.site_map_file is not None:
            raise ValueError("give the site map inline (site_map) or as a file (site_map_file), not both")
        if self.facility is not None:
            site_map = self.resolved_site_map()
            if site_map is None:
                raise ValueError(f"facility {self.facility!r} needs site_map or site_map_file")
            try:
                site_map.facility(self.facility)
            except KeyError as error:
                raise ValueError(str(error.args[0])) from error
        return self

    def resolved_site_map(self) -> SiteMap | None:
        """The site map, read from ``site_map_file`` when it is given as a file."""
        if self.site_map is not None:
            return self.site_map
        if self.site_map_file is None:
            return None
        try:
            data = yaml.safe_load(Path(self.site_map_file).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read site map {self.site_map_file}: {error}") from error
        return SiteMap.model_validate(data or {})

    def selector(self) -> TopicSelector:
        """The compiled selection."""
        patterns = list(self.patterns)
        if self.facility is not None:
            site_map = self.resolved_site_map()
            assert site_map is not None  # checked by the validator
            patterns.append(site_map.topic_regex(self.facility).pattern)
        return TopicSelector(
            names=frozenset(self.topics), patterns=tuple(patterns), exclude=tuple(self.exclude)
        )


class _PlainOrJsonEnvSource(EnvSettingsSource):
    """Environment source that takes a list either as JSON or as the plain text the field's validator parses.

    ``INGESTD_MIRROR_SOURCE__BOOTSTRAP_SERVERS=host1:9092,host2:9092`` is what an
    operator writes; pydantic-settings would insist on JSON for a list field.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


class MirrorSettings(BaseSettings):
    """Settings of one mirror instance (central Kafka → a facility's Kafka).

    Several instances with the same ``group_id`` share the topics' partitions;
    each needs its own ``instance`` name.
    """

    model_config = SettingsConfigDict(
        env_prefix="INGESTD_MIRROR_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    source: KafkaConnection = Field(
        ...,
        title="Source cluster",
        description="The central (USDF) Kafka the topics are read from; topic read access is all it needs.",
    )
    target: KafkaConnection = Field(
        ...,
        title="Target cluster",
        description="The facility's Kafka; needs topic create/write, transactional id write and group read.",
    )
    source_alias: str = Field(
        "usdf",
        pattern=_NAME_PATTERN,
        title="Source cluster alias",
        description="MirrorMaker 2's alias of the source: the prefix of the prefix policy, the provenance "
        "header's cluster name and part of the default group id.",
        examples=["usdf"],
    )
    target_alias: str = Field(
        "local",
        pattern=_NAME_PATTERN,
        title="Target cluster alias",
        description="MirrorMaker 2's alias of the target (only used to render MirrorMaker 2 configuration).",
        examples=["frdf", "ukdf"],
    )
    policy: ReplicationPolicy = Field(
        ReplicationPolicy.identity,
        title="Naming policy",
        description="identity keeps topic names (FrDF today); prefix names them <source_alias>.<topic> "
        "(RAL today). Same rules as MirrorMaker 2's Identity/DefaultReplicationPolicy.",
    )
    separator: str = Field(
        ".",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        title="Prefix separator",
        description="MirrorMaker 2's replication.policy.separator.",
    )
    selection: TopicSelection = Field(..., title="Topic selection")
    instance: str = Field(
        default_factory=socket.gethostname,
        pattern=_ID_PATTERN,
        title="Instance name",
        description="Unique, stable name of this instance (a StatefulSet pod name, a host name). It makes "
        "the transactional id and the static group membership: a restarted instance aborts its own "
        "unfinished transaction and gets its partitions back at once. Never run two instances with one name.",
        examples=["mirror-0"],
    )
    group_id: str | None = Field(
        None,
        pattern=_ID_PATTERN,
        title="Group id (on the target)",
        description="Consumer group on the TARGET cluster that shares partitions among instances and "
        "stores the mirrored source positions; default ingestd-mirror.<source_alias>.",
    )
    transactional_id_prefix: str = Field(
        "ingestd-mirror",
        pattern=_ID_PATTERN,
        title="Transactional id prefix",
        description="The producer's transactional.id is <prefix>.<source_alias>.<instance>.",
    )
    initial_position: InitialPosition = Field(
        "earliest",
        title="Initial position",
        description="Where to start a partition that has no stored position yet: earliest copies what the "
        "source still retains (safe: the daemon is idempotent), latest only what arrives from now on.",
    )
    target_retention_ms: int | None = Field(
        7 * 24 * 3600 * 1000,
        ge=-1,
        title="Target retention",
        description="retention.ms of target topics the mirror creates; -1 keeps forever, None uses the "
        "broker default. Longer than the central 6 h, so a facility can replay after a long outage.",
    )
    target_replication_factor: int = Field(
        -1,
        ge=-1,
        title="Target replication factor",
        description="Replication factor of created target topics; -1 uses the broker default.",
    )
    target_topic_config: dict[str, str] = Field(
        default_factory=dict,
        title="Extra target topic configuration",
        description="Further topic configs for created target topics (e.g. min.insync.replicas).",
        examples=[{"min.insync.replicas": "2"}],
    )
    batch_max_records: int = Field(
        20_000,
        ge=1,
        title="Records per transaction",
        description="Upper bound on records per transaction.",
    )
    batch_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        title="Bytes per transaction",
        description="Upper bound on key+value bytes per transaction.",
    )
    batch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=60_000,
        title="Batch time bound",
        description="How long to gather records before committing what was gathered; bounds replication "
        "latency when traffic is low (a backlog fills whole transactions at once). 20 ms is part of the "
        "end-to-end p99 under a second at 1,000 events/s (docs/PERFORMANCE.md).",
    )
    transaction_timeout_ms: int = Field(
        60_000,
        ge=1_000,
        title="Transaction timeout",
        description="A transaction left open longer (a hung or killed instance) is aborted by the broker.",
    )
    transaction_call_timeout_s: float = Field(
        15.0,
        ge=1.0,
        le=300.0,
        title="Transactional call deadline",
        description="Deadline of each blocking transactional call (init, send offsets, commit, abort), "
        "retries included. A call past it is given up: the transaction is aborted, or the producer rebuilt "
        "when the call never returned (librdkafka can wait forever for a coordinator that is gone).",
    )
    stall_limit_s: float = Field(
        120.0,
        ge=10.0,
        title="Stall limit",
        description="/healthz fails (so the supervisor restarts the process) when no transaction was "
        "committed for this long while records wait, and /readyz names the reason. Must leave room for "
        "a rebuild of the producer: more than twice the transactional call deadline.",
    )
    max_producer_rebuilds: int = Field(
        5,
        ge=1,
        title="Producer rebuilds before exit",
        description="Rebuilds of the transactional producer without a committed transaction in between "
        "before the process exits non-zero instead (each stuck call leaves a client behind until it "
        "returns, so rebuilding forever would leak them).",
    )
    session_timeout_ms: int = Field(
        10_000,
        ge=6_000,
        title="Group session timeout",
        description="How long a silent instance keeps its partitions before another instance takes them.",
    )
    discovery_interval_s: float = Field(
        10.0,
        gt=0,
        title="Topic discovery interval",
        description="How often the source's topic list is read to pick up new matching topics.",
    )
    compression: Compression = Field(
        "lz4",
        title="Target compression",
        description="compression.type of the target producer.",
    )
    max_record_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        title="Largest record",
        description="Producer message.max.bytes; must not exceed the target brokers' message.max.bytes.",
    )
    max_consecutive_aborts: int = Field(
        10,
        ge=1,
        title="Consecutive aborts before exit",
        description="A batch that keeps failing (e.g. a record the target refuses) ends the process instead "
        "of looping; the supervisor restart and the crash loop are the alert.",
    )
    http_host: str = Field(
        "0.0.0.0",
        title="Health/metrics address",
        description="Address of /healthz, /readyz and /metrics.",
    )
    http_port: int = Field(8081, ge=0, le=65535, title="Health/metrics port", description="0 picks a port.")

    _config_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the YAML file given to :func:`load_mirror_settings`."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, _PlainOrJsonEnvSource(settings_cls)]
        if cls._config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._config_file))
        sources.append(file_secret_settings)
        return tuple(sources)

    @model_validator(mode="after")
    def _no_loop(self) -> MirrorSettings:
        same_cluster = set(self.source.bootstrap_servers) & set(self.target.bootstrap_servers)
        if same_cluster and self.policy is ReplicationPolicy.identity:
            raise ValueError(
                f"source and target share {sorted(same_cluster)}: with the identity policy the mirror would "
                "copy topics onto themselves; use policy: prefix or another target"
            )
        return self

    @model_validator(mode="after")
    def _stall_limit_leaves_room(self) -> MirrorSettings:
        if self.stall_limit_s <= 2 * self.transaction_call_timeout_s:
            raise ValueError(
                f"stall_limit_s ({self.stall_limit_s}) must exceed twice transaction_call_timeout_s "
                f"({self.transaction_call_timeout_s}): a stuck call is given up after one deadline and the "
                "rebuilt producer needs another one before the mirror makes progress again"
            )
        return self

    @property
    def effective_group_id(self) -> str:
        """The group on the target cluster (assignment and stored positions)."""
        return self.group_id or f"ingestd-mirror.{self.source_alias}"

    @property
    def transactional_id(self) -> str:
        """This instance's transactional id, stable across restarts."""
        return f"{self.transactional_id_prefix}.{self.source_alias}.{self.instance}"

    def naming(self) -> TopicNaming:
        """The source → target topic naming."""
        return TopicNaming(self.policy, self.source_alias, self.separator)


def load_mirror_settings(config_file: Path | None = None, **overrides: Any) -> MirrorSettings:
    """Load the settings from ``config_file`` (YAML) and the environment, which wins.

    Raises
    ------
    MirrorConfigError
        The file is missing or unreadable (validation errors are pydantic's
        ``ValidationError``, which names each bad field).
    """
    if config_file is None:
        return MirrorSettings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise MirrorConfigError(f"mirror configuration file {path} does not exist or is not a file")
    try:
        yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MirrorConfigError(f"cannot read mirror configuration {path}: {error}") from error
    from_file = type(
        "MirrorSettingsFromFile", (MirrorSettings,), {"_config_file": path, "__module__": __name__}
    )
    settings: MirrorSettings = from_file(**overrides)
    return settings
