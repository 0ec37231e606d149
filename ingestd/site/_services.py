"""Each service's configuration file, derived from the site: what ``--config`` reads.

Every target renders exactly these documents (only the paths where secrets are
mounted differ between targets), so a service loads its settings through one code
path whatever runs it, and a value of the site file reaches every service that
uses it. :mod:`ingestd.site._check` loads each document through the service's own
loader to prove it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._errors import SiteValidationError
from ._model import KafkaCluster, SecretRef, ServiceName, Site

__all__ = [
    "CONFIG_FILES",
    "CONFIG_PLACEHOLDER",
    "MigrationJob",
    "SecretPath",
    "ServiceConfig",
    "daemon_topic_pattern",
    "migration_job",
    "service_config",
    "service_configs",
]

SecretPath = Callable[[str], str]
"""Maps a secret's name to the path the running service reads it from (target-specific)."""

CONFIG_FILES: Final = {
    ServiceName.daemon: "daemon.yaml",
    ServiceName.mirror: "mirror.yaml",
    ServiceName.publisher: "publisher.yaml",
}
"""File name of each service's configuration, in every target."""

CONFIG_PLACEHOLDER: Final = "{config}"
"""Stands for the configuration file's path in :attr:`ServiceConfig.arguments`."""

_SUBCOMMANDS: Final = {
    ServiceName.daemon: "run",
    ServiceName.mirror: "mirror",
    ServiceName.publisher: "publish",
}


@dataclass(frozen=True)
class ServiceConfig:
    """One service as the site defines it, independent of what runs it.

    Attributes
    ----------
    service
        Which service.
    document
        The YAML document the service reads with ``--config``.
    environment
        Variables the service must also get (settings its loader reads only from
        the environment, such as logging).
    secrets
        Names of the secrets this service reads (only these are mounted into it).
    port
        Its health and metrics port.
    arguments
        The ``ingestd`` arguments that start it; :data:`CONFIG_PLACEHOLDER` stands for the file.
    """

    service: ServiceName
    document: dict[str, Any]
    environment: dict[str, str]
    secrets: tuple[str, ...]
    port: int
    arguments: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """The configuration file's name (``daemon.yaml`` ...)."""
        return CONFIG_FILES[self.service]

    def command(self, executable: str, config_path: str) -> list[str]:
        """The full command line, with ``config_path`` in place."""
        return [executable, *(config_path if arg == CONFIG_PLACEHOLDER else arg for arg in self.arguments)]


class _Secrets:
    """Resolves references and remembers which secrets a service used."""

    def __init__(self, resolve: SecretPath) -> None:
        self._resolve = resolve
        self.used: list[str] = []

    def path(self, reference: SecretRef) -> str:
        if reference.secret not in self.used:
            self.used.append(reference.secret)
        return self._resolve(reference.secret)


def _kafka(cluster: KafkaCluster, client_id: str, secrets: _Secrets) -> dict[str, Any]:
    security = cluster.security
    section: dict[str, Any] = {"protocol": security.protocol}
    if security.protocol != "PLAINTEXT":
        section["verify_hostname"] = security.verify_hostname
        if security.ca is not None:
            section["ca_location"] = secrets.path(security.ca)
    if security.protocol == "SSL" and security.certificate is not None and security.key is not None:
        section["certificate_location"] = secrets.path(security.certificate)
        section["key_location"] = secrets.path(security.key)
    if security.protocol == "SASL_SSL":
        assert security.password is not None  # the model requires it
        section["mechanism"] = security.mechanism
        section["username"] = security.username
        section["password_file"] = secrets.path(security.password)
    connection: dict[str, Any] = {
        "bootstrap_servers": list(cluster.bootstrap_servers),
        "security": section,
        "client_id": client_id,
    }
    if cluster.librdkafka:
        connection["librdkafka"] = dict(cluster.librdkafka)
    return connection


def daemon_topic_pattern(site: Site) -> str:
    """Every topic that can carry the facility's events, in the syntax the daemon's consumer accepts.

    The site map's regex uses non-capturing groups, which librdkafka's regular
    expressions do not know; plain groups match the same names.
    """
    assert site.facility is not None
    return site.site_map.topic_regex(site.facility).pattern.replace("(?:", "(")


def _site_map(site: Site) -> dict[str, Any]:
    document: dict[str, Any] = site.site_map.model_dump(mode="json")
    return document


def _daemon(site: Site, secrets: _Secrets) -> dict[str, Any]:
    assert site.local_kafka is not None
    assert site.registry is not None
    assert site.facility is not None
    daemon = site.daemon
    consumer: dict[str, Any] = {
        "group_id": daemon.group_id or f"ingestd-{site.name}",
        "source_aliases": [site.mirror.source_alias],
    }
    if daemon.topics:
        consumer["topics"] = list(daemon.topics)
    else:
        consumer["topic_pattern"] = daemon_topic_pattern(site)
    registry: dict[str, Any] = {"url": site.registry.url, "create_schema": site.registry.create_schema}
    if site.registry.password is not None:
        registry["password_file"] = secrets.path(site.registry.password)
    document: dict[str, Any] = {
        "kafka": _kafka(site.local_kafka, f"ingestd-{site.instance}-daemon", secrets),
        "consumer": consumer,
        "site": _site_map(site),
        "planning": {"facility": site.facility},
        "registry": registry,
        "dead_letters": {"replication_factor": site.local_kafka.replication_factor},
        "http": {"host": "0.0.0.0", "port": daemon.port},
    }
    opensearch = site.opensearch
    if opensearch.urls:
        section: dict[str, Any] = {
            "urls": list(opensearch.urls),
            "index_prefix": opensearch.index_prefix,
            "number_of_replicas": opensearch.number_of_replicas,
            "verify_certs": opensearch.verify_certs,
        }
        if opensearch.username is not None and opensearch.password is not None:
            section["username"] = opensearch.username
            section["password_file"] = secrets.path(opensearch.password)
        if opensearch.ca is not None:
            section["ca_file"] = secrets.path(opensearch.ca)
        document["opensearch"] = section
    return document


def _mirror(site: Site, secrets: _Secrets) -> dict[str, Any]:
    assert site.local_kafka is not None
    assert site.facility is not None
    mirror = site.mirror
    document: dict[str, Any] = {
        "source": _kafka(site.central_kafka, f"ingestd-{site.instance}-mirror", secrets),
        "target": _kafka(site.local_kafka, f"ingestd-{site.instance}-mirror", secrets),
        "source_alias": mirror.source_alias,
        "target_alias": site.name,
        "policy": mirror.policy,
        "separator": mirror.separator,
        "selection": {"facility": site.facility, "site_map": _site_map(site)},
        "target_replication_factor": site.local_kafka.replication_factor,
        "http_host": "0.0.0.0",
        "http_port": mirror.port,
    }
    if mirror.group_id is not None:
        document["group_id"] = mirror.group_id
    return document


def _publisher(site: Site, secrets: _Secrets) -> dict[str, Any]:
    publisher = site.publisher
    document: dict[str, Any] = {
        "kafka": _kafka(site.central_kafka, f"ingestd-{site.instance}-publisher", secrets),
        "site_map": _site_map(site),
        "metadata": {"source": publisher.metadata_source},
        "topics": {"replication_factor": site.central_kafka.replication_factor},
        "http_host": "0.0.0.0",
        "http_port": publisher.port,
    }
    if publisher.database is not None:
        database: dict[str, Any] = {"url": publisher.database.url}
        if publisher.database.password is not None:
            database["password_file"] = secrets.path(publisher.database.password)
        if publisher.database.db_schema is not None:
            database["db_schema"] = publisher.database.db_schema
        document["database"] = database
    if publisher.mode == "route":
        document["route"] = {
            "source_topic": publisher.route_topic,
            "group_id": f"ingestd-{site.name}-publisher",
        }
    return document


_BUILDERS: Final[dict[ServiceName, Callable[[Site, _Secrets], dict[str, Any]]]] = {
    ServiceName.daemon: _daemon,
    ServiceName.mirror: _mirror,
    ServiceName.publisher: _publisher,
}


def _merge_extra(generated: dict[str, Any], extra: dict[str, Any], path: str, problems: list[str]) -> None:
    for key, value in extra.items():
        here = f"{path}.{key}"
        if key not in generated:
            generated[key] = value
        elif isinstance(generated[key], dict) and isinstance(value, dict):
            _merge_extra(generated[key], value, here, problems)
        else:
            problems.append(
                f"{here}: derived from the site file (value {generated[key]!r}); change it where the site "
                "file names it instead of overriding it here"
            )


def service_config(site: Site, service: ServiceName, secret_path: SecretPath) -> ServiceConfig:
    """Build the configuration of ``service`` with secrets at ``secret_path(name)``.

    Raises
    ------
    SiteValidationError
        The service's ``config`` mapping overrides a value the site model derives.
    """
    secrets = _Secrets(secret_path)
    document = _BUILDERS[service](site, secrets)
    problems: list[str] = []
    _merge_extra(document, dict(site.service(service).config), f"{service.value}.config", problems)
    if problems:
        raise SiteValidationError(
            "the site's service settings conflict:\n" + "\n".join(f"  - {p}" for p in problems), problems
        )
    arguments: list[str] = [_SUBCOMMANDS[service], "--config", CONFIG_PLACEHOLDER]
    if service is ServiceName.publisher and site.publisher.mode == "route":
        arguments.append("--route")
    environment: dict[str, str] = {
        "INGESTD_LOG_LEVEL": site.logging.level,
        "INGESTD_LOG_FORMAT": site.logging.format,
    }
    return ServiceConfig(
        service=service,
        document=document,
        environment=environment,
        secrets=tuple(secrets.used),
        port=site.service(service).port,
        arguments=tuple(arguments),
    )


@dataclass(frozen=True)
class MigrationJob:
    """``ingestd registry upgrade`` for the site's registry: run before starting a newer daemon.

    The registry commands read their settings from the environment only, so the
    job is an environment (URL, password file, logging) and the secrets it reads.
    """

    environment: dict[str, str]
    secrets: tuple[str, ...]
    arguments: tuple[str, ...] = ("registry", "upgrade")


def migration_job(site: Site, secret_path: SecretPath) -> MigrationJob | None:
    """The registry migration of ``site`` (None when the site runs no daemon)."""
    if ServiceName.daemon not in site.enabled_services or site.registry is None:
        return None
    environment = {
        "INGESTD_REGISTRY_URL": site.registry.url,
        "INGESTD_LOG_LEVEL": site.logging.level,
        "INGESTD_LOG_FORMAT": site.logging.format,
    }
    secrets: tuple[str, ...] = ()
    if site.registry.password is not None:
        environment["INGESTD_REGISTRY_PASSWORD_FILE"] = secret_path(site.registry.password.secret)
        secrets = (site.registry.password.secret,)
    return MigrationJob(environment=environment, secrets=secrets)


def service_configs(site: Site, secret_path: SecretPath) -> list[ServiceConfig]:
    """The configuration of every enabled service, in a fixed order."""
    return [service_config(site, service, secret_path) for service in site.enabled_services]
