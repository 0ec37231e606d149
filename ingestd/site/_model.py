"""The site-file model: one facility deployment, every service's settings derived from it.

A site file says *what* a deployment is (its facility, clusters, registry, ports,
secrets by reference); the renderers say *how* each target (systemd, Kubernetes,
docker-compose, MirrorMaker 2) runs it. Values that several services share are
written once here: the registry URL, the Kafka clusters and their security, the
replication factor of created topics, the log level. Tuning a service beyond what
the model names goes in that service's ``config`` mapping, which is merged into the
service's own configuration file and validated by the service's own loader.

Secrets never appear in a site file. A field that needs one holds a reference
``{secret: NAME}`` to an entry of the ``secrets`` catalogue, which says where each
target finds it: a root-only file on a systemd host (handed over with
``LoadCredential=``), a Kubernetes Secret key, a file next to the compose project.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestd.sitemap import SiteMap

__all__ = [
    "OPEN_MAPPINGS",
    "SCHEMA_VERSION",
    "ComposeSettings",
    "DaemonService",
    "Environment",
    "ImageSettings",
    "InstallSettings",
    "KafkaCluster",
    "KafkaSecurity",
    "KubernetesSecretKey",
    "KubernetesSettings",
    "LoggingSettings",
    "MirrorService",
    "OpenSearchSection",
    "PublisherService",
    "RegistrySection",
    "ResourceAmounts",
    "Resources",
    "RucioDatabase",
    "SecretRef",
    "SecretSpec",
    "ServiceMonitorSettings",
    "ServiceName",
    "Site",
]

SCHEMA_VERSION: Final = 1
"""Version of the site-file format this code reads."""

OPEN_MAPPINGS: Final = frozenset(
    {
        ("daemon", "config"),
        ("mirror", "config"),
        ("publisher", "config"),
        ("secrets",),
        ("central_kafka", "librdkafka"),
        ("local_kafka", "librdkafka"),
        ("kubernetes", "labels"),
        ("kubernetes", "service_monitor", "labels"),
        ("site_map", "facilities", "*", "prefixes"),
    }
)
"""Free-form mappings of the site file, where an overlay may add keys (see :mod:`ingestd.site._layers`)."""

_SLUG = r"^[a-z][a-z0-9-]{0,29}[a-z0-9]$"
_SECRET_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Environment(StrEnum):
    """Which kind of deployment a site is; set by the environment overlays."""

    prod = "prod"
    """Production: replicated topics, several replicas, JSON logs."""
    test = "test"
    """A facility's test instance: production shape, smaller."""
    dev = "dev"
    """A laptop or the local test bed: one of everything, on 127.0.0.1."""


class ServiceName(StrEnum):
    """The long-running services a site can run."""

    daemon = "daemon"
    """``ingestd run``: the facility's topics into the registry."""
    mirror = "mirror"
    """``ingestd mirror``: the facility's topics from the central Kafka to the local one."""
    publisher = "publisher"
    """``ingestd publish``: Rucio's transfer events to the central Kafka (USDF only)."""


class SecretRef(_Strict):
    """A reference to an entry of the site's ``secrets`` catalogue (``{secret: NAME}``)."""

    secret: str = Field(
        ...,
        pattern=_SECRET_NAME,
        title="Secret name",
        description="Name of an entry of the top-level secrets catalogue.",
        examples=["registry-password"],
    )


class KubernetesSecretKey(_Strict):
    """Where a secret lives in Kubernetes."""

    secret: str | None = Field(
        None,
        pattern=_SECRET_NAME,
        title="Secret object",
        description="Name of the Kubernetes Secret; the catalogue entry's own name when unset.",
        examples=["ingestd-frdf-registry"],
    )
    key: str = Field(
        "value",
        pattern=r"^[-._a-zA-Z0-9]+$",
        title="Key in the Secret",
        description="Data key holding the value (e.g. password, ca.crt for a Strimzi cluster CA).",
        examples=["value", "password", "ca.crt"],
    )


class SecretSpec(_Strict):
    """One secret a deployment needs, and where each target finds it (never its value)."""

    description: str = Field(
        ...,
        min_length=1,
        title="What it is",
        description="Shown by `ingestd site check`, so whoever provisions it knows what to put there.",
        examples=["Password of the PostgreSQL role ingestd on the registry database"],
    )
    file: PurePosixPath | None = Field(
        None,
        title="File on a systemd host",
        description=(
            "Root-only file the unit loads with LoadCredential=; default "
            "<install.config_dir>/<instance>/credentials/<name>."
        ),
        examples=["/etc/ingestd/frdf-prod/credentials/registry-password"],
    )
    kubernetes: KubernetesSecretKey = Field(
        default_factory=KubernetesSecretKey,
        title="Kubernetes Secret",
        description="Secret and key mounted as a file into the pods that need it.",
    )
    compose_file: str | None = Field(
        None,
        title="File for docker-compose",
        description="Path relative to the compose file; default ./secrets/<name>.",
        examples=["./secrets/registry-password"],
    )

    @field_validator("file")
    @classmethod
    def _absolute(cls, value: PurePosixPath | None) -> PurePosixPath | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"file {value} must be an absolute path")
        return value


class KafkaSecurity(_Strict):
    """How the services authenticate to one Kafka cluster; credentials by reference only."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT",
        title="Security protocol",
        description="PLAINTEXT only on a private network (what USDF runs today).",
    )
    mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        "SCRAM-SHA-512", title="SASL mechanism", description="For SASL_SSL (Strimzi's scram-sha-512)."
    )
    username: str | None = Field(
        None, min_length=1, title="SASL user name", description="For SASL_SSL.", examples=["ingestd-frdf"]
    )
    password: SecretRef | None = Field(None, title="SASL password", description="For SASL_SSL.")
    ca: SecretRef | None = Field(
        None, title="CA bundle", description="PEM of the brokers' CA (SSL, SASL_SSL); system store if unset."
    )
    certificate: SecretRef | None = Field(None, title="Client certificate", description="Mutual TLS (SSL).")
    key: SecretRef | None = Field(None, title="Client private key", description="Mutual TLS (SSL).")
    verify_hostname: bool = Field(True, title="Verify broker host names")

    @model_validator(mode="after")
    def _fits_protocol(self) -> KafkaSecurity:
        tls_only = {"certificate": self.certificate, "key": self.key}
        sasl_only = {"username": self.username, "password": self.password}
        if self.protocol == "PLAINTEXT":
            given = [k for k, v in {**tls_only, **sasl_only, "ca": self.ca}.items() if v is not None]
            if given:
                raise ValueError(f"PLAINTEXT takes no credentials, but {', '.join(given)} set")
        elif self.protocol == "SSL":
            if (self.certificate is None) != (self.key is None):
                raise ValueError("SSL client authentication needs both certificate and key (or neither)")
            given = [k for k, v in sasl_only.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} are for SASL_SSL, not SSL")
        else:
            if self.username is None or self.password is None:
                raise ValueError("SASL_SSL needs username and password ({secret: NAME})")
            given = [k for k, v in tls_only.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} are for SSL client authentication, not SASL_SSL")
        return self


class KafkaCluster(_Strict):
    """One Kafka cluster as every service of the site reaches it."""

    bootstrap_servers: list[str] = Field(
        ...,
        min_length=1,
        title="Bootstrap servers",
        description="host:port of one or more brokers.",
        examples=[["kafka-central.example.org:9092"]],
    )
    security: KafkaSecurity = Field(default_factory=KafkaSecurity, title="Security")
    replication_factor: int = Field(
        3,
        ge=1,
        le=10,
        title="Replication factor of created topics",
        description=(
            "Used by every service that creates topics on this cluster (dead letters, mirrored topics, "
            "facility topics). 1 only on a single-broker development cluster."
        ),
        examples=[3, 1],
    )
    librdkafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        title="Extra librdkafka parameters",
        description="Passed to every client of this cluster (socket.keepalive.enable ...).",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        for server in value:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        return value


def _url_port(url: str, default: int) -> int:
    parts = urlsplit(url)
    try:
        return parts.port or default
    except ValueError:
        return default


class RegistrySection(_Strict):
    """The registry database the daemon writes to."""

    url: str = Field(
        ...,
        title="Registry URL",
        description=(
            "postgresql://USER@HOST:PORT/DATABASE (psycopg 3), or sqlite:///PATH. Never a password: "
            "that is the password secret."
        ),
        examples=["postgresql://ingestd@registry-db.example.org:5432/butler"],
    )
    password: SecretRef | None = Field(None, title="Database password")
    create_schema: bool = Field(
        False,
        title="Create the schema on first start",
        description="Off in production, where the registry owner runs the migrations (docs/OPERATIONS.md).",
    )

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].split("+", 1)[0].lower() if "://" in value else ""
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(f"registry URL {value!r} must start with postgresql:// or sqlite:///")
        if urlsplit(value).password:
            raise ValueError(
                "the registry URL must not contain a password; use registry.password: {secret: NAME}"
            )
        return value

    @property
    def port(self) -> int | None:
        """TCP port of the database server (None for SQLite)."""
        if self.url.startswith("sqlite"):
            return None
        return _url_port(self.url, 5432)


class OpenSearchSection(_Strict):
    """Where the daemon sends one document per event (optional)."""

    urls: list[str] = Field(
        default_factory=list,
        title="OpenSearch URLs",
        description="Empty: no event documents (ingest runs the same).",
        examples=[["https://opensearch.example.org:9200"]],
    )
    index_prefix: str = Field(
        "ingestd-events",
        pattern=r"^[a-z0-9][a-z0-9._\-]{0,199}$",
        title="Index prefix",
        examples=["ingestd-events-frdf"],
    )
    number_of_replicas: int = Field(1, ge=0, le=8, title="Replicas per daily index")
    username: str | None = Field(None, min_length=1, title="Basic-auth user")
    password: SecretRef | None = Field(None, title="Basic-auth password")
    ca: SecretRef | None = Field(None, title="CA bundle of the nodes' certificates")
    verify_certs: bool = Field(True, title="Verify certificates")

    @field_validator("urls")
    @classmethod
    def _http(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"OpenSearch URL {url!r} must start with http:// or https://")
            if urlsplit(url).password:
                raise ValueError("OpenSearch URLs must not carry a password; use opensearch.password")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> OpenSearchSection:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self

    @property
    def ports(self) -> list[int]:
        """TCP ports of the nodes."""
        return sorted({_url_port(url, 9200) for url in self.urls})


class LoggingSettings(_Strict):
    """Logging of every service (``INGESTD_LOG_*``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", title="Log level")
    format: Literal["json", "console"] = Field(
        "json", title="Log format", description="json for journald and log shippers; console for a terminal."
    )


class ResourceAmounts(_Strict):
    """CPU and memory amounts in Kubernetes quantity syntax."""

    cpu: str | None = Field(None, title="CPU", examples=["250m", "1"])
    memory: str | None = Field(None, title="Memory", examples=["256Mi", "1Gi"])

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 250m, 512Mi, 1Gi)")
        return value


class Resources(_Strict):
    """Requests and limits of one service's container (Kubernetes, compose)."""

    requests: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(cpu="100m", memory="256Mi"), title="Requests"
    )
    limits: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(memory="512Mi"),
        title="Limits",
        description="A memory limit always; a CPU limit only if the cluster's policy wants one (throttling).",
    )


class _Service(_Strict):
    enabled: bool = Field(False, title="Run this service here")
    port: int = Field(
        8080,
        ge=1,
        le=65_535,
        title="Health and metrics port",
        description="Serves /healthz, /readyz, /metrics.",
    )
    replicas: int = Field(
        1,
        ge=0,
        le=100,
        title="Replicas (Kubernetes)",
        description="Instances sharing the work; systemd and compose run one per host or project.",
    )
    resources: Resources = Field(default_factory=Resources, title="Container resources")
    config: dict[str, Any] = Field(
        default_factory=dict,
        title="Further service settings",
        description=(
            "Merged into the service's configuration file (keys of its settings model) and validated by "
            "the service's own loader. Keys the site model sets (the registry URL, Kafka clusters, ports) "
            "are refused here: set them where the site file names them."
        ),
        examples=[{"batching": {"max_events": 2000}}],
    )


class DaemonService(_Service):
    """The ingest daemon (``ingestd run``)."""

    group_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        title="Consumer group",
        description="Default ingestd-<name>.",
        examples=["ingestd-frdf"],
    )
    topics: list[str] = Field(
        default_factory=list,
        title="Topics",
        description="Explicit topic names; empty: every topic of the facility, derived from the site map.",
    )


class MirrorService(_Service):
    """The mirror (``ingestd mirror``), central Kafka to the facility's Kafka."""

    port: int = Field(8081, ge=1, le=65_535, title="Health and metrics port")
    policy: Literal["identity", "prefix"] = Field(
        "identity",
        title="Topic naming on the local cluster",
        description="identity keeps names (FrDF); prefix writes <source_alias>.<name> (RAL's usdf.X).",
    )
    source_alias: str = Field("usdf", pattern=r"^[A-Za-z0-9_-]+$", title="Alias of the central cluster")
    separator: str = Field(".", min_length=1, title="Prefix separator")
    group_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", title="Group id on the local cluster")


class RucioDatabase(_Strict):
    """Rucio's database, for the publisher's table mode and DID metadata."""

    url: str = Field(
        ...,
        title="Rucio database URL",
        description="SQLAlchemy URL without a password.",
        examples=["postgresql://rucio_reader@rucio-db.example.org:5432/rucio"],
    )
    password: SecretRef | None = Field(None, title="Database password")
    db_schema: str | None = Field(None, title="Rucio schema", examples=["rucio"])

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if urlsplit(value).password:
            raise ValueError(
                "the Rucio database URL must not contain a password; use password: {secret: NAME}"
            )
        return value


class PublisherService(_Service):
    """The publisher (``ingestd publish``): Rucio's events to the central Kafka."""

    port: int = Field(8082, ge=1, le=65_535, title="Health and metrics port")
    mode: Literal["table", "route"] = Field(
        "table",
        title="Where events come from",
        description="table: Rucio's messages table; route: one raw Hermes topic on the central cluster.",
    )
    database: RucioDatabase | None = Field(None, title="Rucio database (table mode, metadata)")
    route_topic: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]+$", title="Raw topic (route mode)", examples=["rucio.hermes.raw"]
    )
    metadata_source: Literal["database", "rest", "none"] = Field(
        "database", title="Where missing rubin_butler/rubin_sidecar come from"
    )


class InstallSettings(_Strict):
    """Where things go on a systemd host."""

    prefix: PurePosixPath = Field(
        PurePosixPath("/opt/ingestd"),
        title="Installation prefix",
        description="The virtual environment holding ingestd; units run <prefix>/bin/ingestd.",
        examples=["/opt/ingestd"],
    )
    config_dir: PurePosixPath = Field(
        PurePosixPath("/etc/ingestd"),
        title="Configuration folder",
        description="Rendered service files go to <config_dir>/<instance>/.",
    )
    user: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_-]*$",
        title="Service user",
        description="Unset: a transient DynamicUser per unit (no account to manage). Set it when the "
        "daemon must read files only a given account may read.",
        examples=["ingestd"],
    )
    supplementary_groups: list[str] = Field(
        default_factory=list,
        title="Supplementary groups",
        description="E.g. the group owning the data files.",
    )

    @field_validator("prefix", "config_dir")
    @classmethod
    def _absolute(cls, value: PurePosixPath) -> PurePosixPath:
        if not value.is_absolute():
            raise ValueError(f"{value} must be an absolute path")
        return value


class ImageSettings(_Strict):
    """The container image built by the repository's Dockerfile."""

    repository: str = Field("ghcr.io/lsst-dm/ingestd", min_length=1, title="Image repository")
    tag: str = Field("0.1.0", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", title="Image tag")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", title="Pull policy")

    @property
    def reference(self) -> str:
        """``repository:tag``."""
        return f"{self.repository}:{self.tag}"


class ServiceMonitorSettings(_Strict):
    """How the Prometheus operator finds the services."""

    enabled: bool = Field(True, title="Render a ServiceMonitor")
    labels: dict[str, str] = Field(
        default_factory=dict,
        title="Labels the Prometheus selects ServiceMonitors by",
        examples=[{"release": "kube-prometheus-stack"}],
    )
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", title="Scrape interval")


class KubernetesSettings(_Strict):
    """Kubernetes specifics."""

    namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        title="Namespace",
        description="Default ingestd-<name>.",
    )
    labels: dict[str, str] = Field(default_factory=dict, title="Extra labels on every object")
    run_as_user: int = Field(10001, ge=1, title="UID of the containers (the image's user)")
    service_monitor: ServiceMonitorSettings = Field(default_factory=ServiceMonitorSettings)
    network_policy: bool = Field(True, title="Render NetworkPolicies")
    prometheus_namespace: str = Field(
        "monitoring",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        title="Namespace of Prometheus",
        description="The NetworkPolicy lets pods of this namespace scrape the metrics port.",
    )


class ComposeSettings(_Strict):
    """docker-compose specifics."""

    project: str = Field("ingestd", pattern=r"^[a-z0-9][a-z0-9_-]*$", title="Compose project name")
    infrastructure: bool = Field(
        False,
        title="Run the servers too",
        description=(
            "Add both Kafka clusters, PostgreSQL, OpenSearch with Dashboards and Prometheus to the project "
            "(a laptop); the site's endpoints must then name those services."
        ),
    )
    build: bool = Field(True, title="Build the image from the repository's Dockerfile")


SecretUse = tuple[str, str]
"""(secret name, dotted key path of the reference)."""


class Site(_Strict):
    """One deployment of ingestd: a facility (or USDF) in one environment.

    The instance name ``<name>-<environment>`` names the systemd unit instances,
    the Kubernetes objects and the compose project's configuration folder.
    """

    schema_version: Literal[1] = Field(SCHEMA_VERSION, title="Site-file format version")
    name: str = Field(
        ..., pattern=_SLUG, title="Site name", description="Short lower-case name.", examples=["frdf", "ukdf"]
    )
    environment: Environment = Field(Environment.prod, title="Environment")
    facility: str | None = Field(
        None,
        title="Facility served",
        description="Name in the site map of the facility whose events the daemon and mirror handle.",
        examples=["FrDF"],
    )
    site_map: SiteMap = Field(
        ..., title="Site map", description="Facilities, their RSEs, topics and prefixes."
    )
    central_kafka: KafkaCluster = Field(..., title="Central (USDF) Kafka")
    local_kafka: KafkaCluster | None = Field(None, title="The facility's Kafka")
    registry: RegistrySection | None = Field(None, title="Registry database")
    opensearch: OpenSearchSection = Field(default_factory=OpenSearchSection, title="OpenSearch")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, title="Logging")
    daemon: DaemonService = Field(default_factory=DaemonService, title="Ingest daemon")
    mirror: MirrorService = Field(default_factory=MirrorService, title="Mirror")
    publisher: PublisherService = Field(default_factory=PublisherService, title="Publisher")
    secrets: dict[Annotated[str, Field(pattern=_SECRET_NAME)], SecretSpec] = Field(
        default_factory=dict, title="Secrets catalogue"
    )
    install: InstallSettings = Field(default_factory=InstallSettings, title="systemd host layout")
    image: ImageSettings = Field(default_factory=ImageSettings, title="Container image")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings, title="Kubernetes")
    compose: ComposeSettings = Field(default_factory=ComposeSettings, title="docker-compose")

    @model_validator(mode="after")
    def _coherent(self) -> Site:
        enabled = self.enabled_services
        if not enabled:
            raise ValueError("no service is enabled: set enabled: true under daemon, mirror or publisher")
        local_services = [s for s in enabled if s in (ServiceName.daemon, ServiceName.mirror)]
        if local_services:
            names = ", ".join(s.value for s in local_services)
            if self.facility is None:
                raise ValueError(f"facility is required to run {names}")
            try:
                self.site_map.facility(self.facility)
            except KeyError as error:
                raise ValueError(str(error.args[0])) from None
            if self.local_kafka is None:
                raise ValueError(f"local_kafka is required to run {names}")
        if ServiceName.daemon in enabled and self.registry is None:
            raise ValueError("registry is required to run the daemon")
        if ServiceName.publisher in enabled:
            publisher = self.publisher
            if publisher.mode == "table" and publisher.database is None:
                raise ValueError("publisher.database is required in table mode")
            if publisher.mode == "route" and publisher.route_topic is None:
                raise ValueError("publisher.route_topic is required in route mode")
            if publisher.metadata_source == "database" and publisher.database is None:
                raise ValueError("publisher.metadata_source database needs publisher.database")
        ports: dict[int, str] = {}
        for service in enabled:
            port = self.service(service).port
            if port in ports:
                raise ValueError(f"{service.value}.port and {ports[port]}.port are both {port}")
            ports[port] = service.value
        undeclared = sorted(
            {f"{path} -> {name}" for name, path in self.secret_uses() if name not in self.secrets}
        )
        if undeclared:
            raise ValueError(
                "secret references without an entry in the secrets catalogue: " + "; ".join(undeclared)
            )
        return self

    @property
    def instance(self) -> str:
        """``<name>-<environment>``: systemd instance, Kubernetes and compose names."""
        return f"{self.name}-{self.environment.value}"

    @property
    def enabled_services(self) -> list[ServiceName]:
        """The services this site runs, in a fixed order."""
        return [name for name in ServiceName if self.service(name).enabled]

    def service(self, name: ServiceName) -> DaemonService | MirrorService | PublisherService:
        """The section of service ``name``."""
        sections: dict[ServiceName, DaemonService | MirrorService | PublisherService] = {
            ServiceName.daemon: self.daemon,
            ServiceName.mirror: self.mirror,
            ServiceName.publisher: self.publisher,
        }
        return sections[name]

    def secret_uses(self) -> list[SecretUse]:
        """Every ``{secret: NAME}`` reference of the site, with the key path that holds it."""
        found: list[SecretUse] = []

        def walk(value: Any, path: str) -> None:
            if isinstance(value, SecretRef):
                found.append((value.secret, path))
            elif isinstance(value, BaseModel):
                for field_name in type(value).model_fields:
                    walk(getattr(value, field_name), f"{path}.{field_name}" if path else field_name)
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, f"{path}.{key}")
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    walk(item, f"{path}.{index}")

        for field_name in type(self).model_fields:
            if field_name != "secrets":
                walk(getattr(self, field_name), field_name)
        return found

    def secret_file(self, name: str) -> PurePosixPath:
        """Where secret ``name`` lives on a systemd host."""
        spec = self.secrets[name]
        return spec.file or self.install.config_dir / self.instance / "credentials" / name

    def kubernetes_secret(self, name: str) -> tuple[str, str]:
        """(Secret object, key) holding secret ``name`` in Kubernetes."""
        spec = self.secrets[name].kubernetes
        return spec.secret or name, spec.key

    def compose_secret_file(self, name: str) -> str:
        """Path of secret ``name`` relative to the compose file."""
        return self.secrets[name].compose_file or f"./secrets/{name}"

    @property
    def namespace(self) -> str:
        """Kubernetes namespace."""
        return self.kubernetes.namespace or f"ingestd-{self.name}"
