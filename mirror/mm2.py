"""MirrorMaker 2 configuration rendered from the mirror's settings, for sites that prefer MirrorMaker 2.

One site configuration, two replicators: :func:`render_mm2_properties` writes a
dedicated-mode ``mm2.properties`` (``connect-mirror-maker.sh``) and
:func:`render_strimzi_mirrormaker2` a Strimzi ``KafkaMirrorMaker2`` resource,
both with the same topics, the same target names (identity or prefix policy)
and the same guarantees as ``ingestd mirror`` as far as MirrorMaker 2 can give
them:

- exactly-once (KIP-618, Kafka >= 3.5): transactional writes to the target
  (``exactly.once.source.support = enabled``) and ``read_committed`` reads from
  the source; in Strimzi also ``exactly.once.support = required`` on the source
  connector, so a misconfiguration fails instead of silently degrading (a
  dedicated-mode flow cannot say it for that connector alone);
- read-only on the central cluster: no heartbeats, checkpoints, group-offset or
  ACL sync there, offset syncs kept on the target;
- secrets never written into the files: certificate and password files are
  referenced through Kafka's ``DirectoryConfigProvider`` and inline secrets
  through ``EnvVarConfigProvider`` (variables named in the output); Strimzi
  reads them from Kubernetes Secrets.

What MirrorMaker 2 cannot express is refused with :class:`Mm2RenderError`
(a topic regex containing a comma, since both formats split lists on commas)
or stated in a comment (librdkafka-only client parameters; the target retention,
which MirrorMaker 2 cannot set at creation: the rendered configuration stops
it copying the central 6 h retention, so the target broker's default applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ingestd.kafka import KafkaConnection, PlaintextSecurity, SaslSslSecurity, SslSecurity

from ._errors import Mm2RenderError
from ._settings import MirrorSettings

__all__ = [
    "Mm2Options",
    "StrimziSecrets",
    "render_mm2_properties",
    "render_strimzi_mirrormaker2",
    "write_mm2_files",
]

PROPERTIES_FILE = "mm2.properties"
STRIMZI_FILE = "kafkamirrormaker2.yaml"

_CONFIG_PROPERTIES_EXCLUDE = (
    # MirrorMaker 2's defaults (Kafka 3.9), kept...
    r"follower\.replication\.throttled\.replicas",
    r"leader\.replication\.throttled\.replicas",
    r"message\.timestamp\.difference\.max\.ms",
    r"message\.timestamp\.type",
    r"unclean\.leader\.election\.enable",
    r"min\.insync\.replicas",
    # ... plus retention: the facility keeps records longer than the central 6 h.
    r"retention\.ms",
    r"retention\.bytes",
)


class StrimziSecrets(BaseModel):
    """Kubernetes Secrets holding one cluster's credentials, for the Strimzi resource.

    Defaults follow Strimzi's conventions: ``<cluster>-cluster-ca-cert`` with
    ``ca.crt``, and a ``KafkaUser`` Secret with ``user.crt``/``user.key`` (mTLS)
    or ``password`` (SCRAM).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_secret: str | None = Field(
        None, title="CA Secret", description="Secret with the brokers' CA; <alias>-cluster-ca-cert if unset."
    )
    ca_key: str = Field("ca.crt", title="CA key in the Secret")
    user_secret: str = Field(
        "ingestd-mirror", title="User Secret", description="Secret of the KafkaUser the mirror runs as."
    )
    certificate_key: str = Field("user.crt", title="Client certificate key in the user Secret")
    private_key_key: str = Field("user.key", title="Client private key key in the user Secret")
    password_key: str = Field("password", title="SCRAM password key in the user Secret")


class Mm2Options(BaseModel):
    """What MirrorMaker 2 needs beyond the mirror's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        title="Resource name",
        description="Strimzi resource name; ingestd-mirror-<source>-to-<target> if unset.",
    )
    namespace: str | None = Field(None, title="Kubernetes namespace")
    replicas: int = Field(1, ge=1, title="MirrorMaker 2 pods (Strimzi)")
    tasks_max: int = Field(1, ge=1, title="Source connector tasks")
    kafka_version: str = Field("3.9.0", title="Kafka version of the Strimzi MirrorMaker 2 image")
    rest_listener: str = Field(
        "http://0.0.0.0:8083",
        title="Internal REST listener (dedicated mode)",
        description="Exactly-once in dedicated mode needs MirrorMaker 2 nodes to talk to each other "
        "(KIP-710); secure it or bind it to a private address in production.",
    )
    internal_replication_factor: int = Field(
        -1, ge=-1, title="Replication factor of MirrorMaker 2's internal topics; -1 is the broker default"
    )
    source_secrets: StrimziSecrets = Field(default_factory=StrimziSecrets)
    target_secrets: StrimziSecrets = Field(default_factory=StrimziSecrets)


def _check_patterns(patterns: Sequence[str], what: str) -> None:
    for pattern in patterns:
        if "," in pattern:
            raise Mm2RenderError(
                f"{what} pattern {pattern!r} contains a comma, which MirrorMaker 2 reads as a list "
                "separator; rewrite it without one (e.g. replace {m,n} by explicit alternatives)"
            )


def _env_name(alias: str, what: str) -> str:
    return f"MM2_{alias.upper().replace('-', '_')}_{what}"


def _file_reference(path: Path) -> str:
    """A ``${directory:...}`` reference that makes Kafka read a whole file as the value."""
    return f"${{directory:{path.parent}:{path.name}}}"


def _security_properties(alias: str, connection: KafkaConnection) -> list[tuple[str, str]]:
    security = connection.security
    props: list[tuple[str, str]] = [("security.protocol", security.protocol)]
    if isinstance(security, PlaintextSecurity):
        return props
    if security.ca_location is not None:
        props += [("ssl.truststore.type", "PEM"), ("ssl.truststore.location", str(security.ca_location))]
    if not security.verify_hostname:
        props.append(("ssl.endpoint.identification.algorithm", ""))
    if isinstance(security, SslSecurity):
        if security.certificate_location is not None and security.key_location is not None:
            props += [
                ("ssl.keystore.type", "PEM"),
                ("ssl.keystore.certificate.chain", _file_reference(Path(security.certificate_location))),
                ("ssl.keystore.key", _file_reference(Path(security.key_location))),
            ]
        if security.key_password is not None:
            props.append(("ssl.key.password", f"${{env:{_env_name(alias, 'SSL_KEY_PASSWORD')}}}"))
        return props
    assert isinstance(security, SaslSslSecurity)
    if security.password_file is not None:
        password = _file_reference(Path(security.password_file))
    else:
        password = f"${{env:{_env_name(alias, 'SASL_PASSWORD')}}}"
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{security.username}" password="{password}";'
    )
    props += [("sasl.mechanism", security.mechanism), ("sasl.jaas.config", jaas)]
    return props


def _secret_variables(alias: str, connection: KafkaConnection) -> list[str]:
    security = connection.security
    if isinstance(security, SslSecurity) and security.key_password is not None:
        return [_env_name(alias, "SSL_KEY_PASSWORD")]
    if isinstance(security, SaslSslSecurity) and security.password_file is None:
        return [_env_name(alias, "SASL_PASSWORD")]
    return []


def _target_topic_note(settings: MirrorSettings) -> str:
    if settings.target_retention_ms is None:
        return "target topics get the target broker's default retention (as with `ingestd mirror`)"
    return (
        f"`ingestd mirror` creates target topics with retention.ms={settings.target_retention_ms}; "
        "MirrorMaker 2 cannot, so set the target broker's log.retention.ms to it"
    )


def _replication_lines(settings: MirrorSettings, options: Mm2Options) -> list[tuple[str, str | int]]:
    """Connector-level settings shared by both formats (without the cluster prefixes)."""
    return [
        ("replication.policy.class", settings.policy.mm2_class),
        ("replication.policy.separator", settings.separator),
        ("replication.factor", settings.target_replication_factor),
        ("offset-syncs.topic.replication.factor", options.internal_replication_factor),
        ("offset-syncs.topic.location", "target"),
        ("refresh.topics.interval.seconds", max(1, round(settings.discovery_interval_s))),
        ("sync.topic.acls.enabled", "false"),
        ("config.properties.exclude", ", ".join(_CONFIG_PROPERTIES_EXCLUDE)),
    ]


def _property(key: str, value: object) -> str:
    """One ``key = value`` line of a Java properties file.

    Java's ``Properties.load`` treats a backslash as an escape, so the regexes'
    backslashes are doubled (``\\.`` must reach MirrorMaker 2 as ``\\.``, not ``.``).
    """
    text = str(value).replace("\\", "\\\\")
    if text[:1].isspace():
        text = "\\" + text
    return f"{key} = {text}"


def render_mm2_properties(settings: MirrorSettings, options: Mm2Options | None = None) -> str:
    """Render a dedicated-mode MirrorMaker 2 ``mm2.properties`` equivalent to ``settings``.

    Raises
    ------
    Mm2RenderError
        The topic selection cannot be written in MirrorMaker 2's list syntax.
    """
    options = options or Mm2Options()
    selector = settings.selection.selector()
    includes = selector.include_patterns()
    _check_patterns(includes, "topic")
    _check_patterns(selector.exclude, "excluded topic")
    source, target = settings.source_alias, settings.target_alias
    flow = f"{source}->{target}"
    lines: list[str] = [
        "# MirrorMaker 2 (dedicated mode) configuration generated by ingestd from the mirror settings;",
        "# regenerate it rather than editing it. Run: connect-mirror-maker.sh mm2.properties",
        "",
        f"clusters = {source}, {target}",
        "config.providers = directory, env",
        "config.providers.directory.class = org.apache.kafka.common.config.provider.DirectoryConfigProvider",
        "config.providers.env.class = org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    ]
    variables = _secret_variables(source, settings.source) + _secret_variables(target, settings.target)
    if variables:
        lines.append(f"# Secrets come from the environment: {', '.join(variables)}")
    for alias, connection, role in ((source, settings.source, "source"), (target, settings.target, "target")):
        lines += [
            "",
            f"# {role} cluster",
            f"{alias}.bootstrap.servers = {','.join(connection.bootstrap_servers)}",
        ]
        lines += [
            _property(f"{alias}.{key}", value) for key, value in _security_properties(alias, connection)
        ]
        if connection.librdkafka:
            lines.append(
                f"# not translated (librdkafka-only parameters of the {role} connection): "
                + ", ".join(sorted(connection.librdkafka))
            )
    lines += [
        "",
        "# One direction only: the facility reads the central cluster.",
        f"{flow}.enabled = true",
        f"{target}->{source}.enabled = false",
        _property(f"{flow}.topics", ", ".join(includes)),
        _property(f"{flow}.topics.exclude", ", ".join(selector.exclude)),
        "",
        "# Exactly-once (KIP-618): transactions on the target, committed reads from the source.",
        f"{target}.exactly.once.source.support = enabled",
        f"{source}.consumer.isolation.level = read_committed",
        "dedicated.mode.enable.internal.rest = true",
        f"listeners = {options.rest_listener}",
        "",
        "# Read-only on the central cluster: nothing is written there. (MirrorMaker 2 3.9 then logs",
        '# "MirrorCheckpointConnector can\'t run with emit.checkpoints.enabled set to false" at start-up.)',
        "emit.heartbeats.enabled = false",
        "emit.checkpoints.enabled = false",
        "sync.group.offsets.enabled = false",
        "",
        f"# Target topics: {_target_topic_note(settings)}.",
        f"{target}.producer.compression.type = {settings.compression}",
        f"{flow}.tasks.max = {options.tasks_max}",
    ]
    lines += [_property(f"{flow}.{key}", value) for key, value in _replication_lines(settings, options)]
    lines += [
        "",
        "# MirrorMaker 2's own topics on the target.",
        f"offset.storage.replication.factor = {options.internal_replication_factor}",
        f"config.storage.replication.factor = {options.internal_replication_factor}",
        f"status.storage.replication.factor = {options.internal_replication_factor}",
    ]
    return "\n".join(lines) + "\n"


def _strimzi_cluster(
    alias: str, connection: KafkaConnection, secrets: StrimziSecrets, config: dict[str, Any]
) -> dict[str, Any]:
    cluster: dict[str, Any] = {"alias": alias, "bootstrapServers": ",".join(connection.bootstrap_servers)}
    security = connection.security
    if not isinstance(security, PlaintextSecurity):
        cluster["tls"] = {
            "trustedCertificates": [
                {"secretName": secrets.ca_secret or f"{alias}-cluster-ca-cert", "certificate": secrets.ca_key}
            ]
        }
        if not security.verify_hostname:
            config = {**config, "ssl.endpoint.identification.algorithm": ""}
    if isinstance(security, SslSecurity) and security.certificate_location is not None:
        cluster["authentication"] = {
            "type": "tls",
            "certificateAndKey": {
                "secretName": secrets.user_secret,
                "certificate": secrets.certificate_key,
                "key": secrets.private_key_key,
            },
        }
    elif isinstance(security, SaslSslSecurity):
        cluster["authentication"] = {
            "type": security.mechanism.lower(),
            "username": security.username,
            "passwordSecret": {"secretName": secrets.user_secret, "password": secrets.password_key},
        }
    if config:
        cluster["config"] = config
    return cluster


def render_strimzi_mirrormaker2(settings: MirrorSettings, options: Mm2Options | None = None) -> str:
    """Render a Strimzi ``KafkaMirrorMaker2`` (``kafka.strimzi.io/v1beta2``) equivalent to ``settings``.

    Raises
    ------
    Mm2RenderError
        The topic selection cannot be written as a Strimzi topics pattern.
    """
    options = options or Mm2Options()
    selector = settings.selection.selector()
    includes = selector.include_patterns()
    _check_patterns(includes, "topic")
    _check_patterns(selector.exclude, "excluded topic")
    source, target = settings.source_alias, settings.target_alias
    internal_rf = options.internal_replication_factor
    connector_config: dict[str, Any] = dict(_replication_lines(settings, options))
    # Per connector here (unlike a dedicated-mode flow, whose settings also reach the heartbeat and
    # checkpoint connectors, which cannot pass the exactly-once preflight check).
    connector_config["exactly.once.support"] = "required"
    connector_config["consumer.isolation.level"] = "read_committed"
    connector_config["producer.override.compression.type"] = settings.compression
    metadata: dict[str, Any] = {
        "name": options.name or f"ingestd-mirror-{source}-to-{target}".lower().replace("_", "-"),
        "labels": {"app.kubernetes.io/part-of": "ingestd", "app.kubernetes.io/component": "mirror"},
        "annotations": {"ingestd/target-topics": _target_topic_note(settings)},
    }
    if options.namespace:
        metadata["namespace"] = options.namespace
    resource: dict[str, Any] = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaMirrorMaker2",
        "metadata": metadata,
        "spec": {
            "version": options.kafka_version,
            "replicas": options.replicas,
            "connectCluster": target,
            "clusters": [
                _strimzi_cluster(source, settings.source, options.source_secrets, {}),
                _strimzi_cluster(
                    target,
                    settings.target,
                    options.target_secrets,
                    {
                        "exactly.once.source.support": "enabled",
                        "config.storage.replication.factor": internal_rf,
                        "offset.storage.replication.factor": internal_rf,
                        "status.storage.replication.factor": internal_rf,
                    },
                ),
            ],
            "mirrors": [
                {
                    "sourceCluster": source,
                    "targetCluster": target,
                    "sourceConnector": {"tasksMax": options.tasks_max, "config": connector_config},
                    "topicsPattern": "|".join(includes),
                    "topicsExcludePattern": "|".join(selector.exclude),
                }
            ],
        },
    }
    header = (
        "# Strimzi KafkaMirrorMaker2 generated by ingestd from the mirror settings: regenerate it.\n"
        "# Exactly-once (Kafka >= 3.5), read-only on the source, same topic names as `ingestd mirror`.\n"
    )
    return header + yaml.safe_dump(resource, sort_keys=False, default_flow_style=False, width=120)


def write_mm2_files(
    settings: MirrorSettings, directory: Path, options: Mm2Options | None = None
) -> list[Path]:
    """Write ``mm2.properties`` and ``kafkamirrormaker2.yaml`` into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    properties = directory / PROPERTIES_FILE
    strimzi = directory / STRIMZI_FILE
    properties.write_text(render_mm2_properties(settings, options))
    strimzi.write_text(render_strimzi_mirrormaker2(settings, options))
    return [properties, strimzi]
