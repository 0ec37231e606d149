"""docker-compose target: the site's services as a compose project, optionally with every server.

Each service runs the image built by the repository's ``Dockerfile`` with its
configuration file inlined as a compose ``config`` (so the project is one file)
and its secrets as compose ``secrets`` read from files beside it. Containers run
as the image's non-root user with a read-only root file system, no capabilities
and no privilege escalation; the health check asks the service's ``/healthz``.

With ``compose.infrastructure`` the project also runs what a laptop lacks: the
central and the local Kafka (KRaft, one node each), PostgreSQL, OpenSearch with
Dashboards, and Prometheus scraping the services. Host ports match the local test
bed (``python -m deploy.local``), so tools pointed at one work with the other.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from ._errors import RenderError
from ._load import LoadedSite
from ._model import Site
from ._output import Rendering, Target, dump_yaml, generated_header
from ._services import ServiceConfig, service_config

__all__ = ["COMPOSE_FILE", "INFRASTRUCTURE", "render_compose"]

COMPOSE_FILE: Final = "docker-compose.yml"
CONFIG_DIR: Final = "/etc/ingestd"

KAFKA_IMAGE: Final = "apache/kafka:3.9.1"
POSTGRES_IMAGE: Final = "postgres:15"
OPENSEARCH_IMAGE: Final = "opensearchproject/opensearch:2.19.2"
DASHBOARDS_IMAGE: Final = "opensearchproject/opensearch-dashboards:2.19.2"
PROMETHEUS_IMAGE: Final = "prom/prometheus:v2.53.4"

INFRASTRUCTURE: Final = {
    "kafka-central": 19092,
    "kafka-local": 29092,
    "postgres": 15432,
    "opensearch": 19200,
    "opensearch-dashboards": 5601,
    "prometheus": 19090,
}
"""Servers added by ``compose.infrastructure`` and their ports on the host (127.0.0.1)."""

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS: Final = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _bytes(quantity: str) -> int:
    match = _QUANTITY.match(quantity)
    if match is None or match.group(2) == "m":
        raise RenderError(f"memory {quantity!r} cannot be expressed in bytes for docker-compose")
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def _cpus(quantity: str) -> float:
    if quantity.endswith("m"):
        return int(quantity[:-1]) / 1000
    return float(quantity)


def _healthcheck(port: int) -> dict[str, Any]:
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=4)"
    return {
        "test": ["CMD", "python", "-c", probe],
        "interval": "15s",
        "timeout": "5s",
        "retries": 4,
        "start_period": "60s",
    }


def _kafka(name: str, host_port: int) -> dict[str, Any]:
    return {
        "image": KAFKA_IMAGE,
        "hostname": name,
        "environment": {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": f"INTERNAL://:9092,HOST://:{host_port},CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"INTERNAL://{name}:9092,HOST://127.0.0.1:{host_port}",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,HOST:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_NUM_PARTITIONS": "3",
            "KAFKA_HEAP_OPTS": "-Xmx512m -Xms512m",
        },
        "ports": [f"127.0.0.1:{host_port}:{host_port}"],
        "healthcheck": {
            "test": [
                "CMD-SHELL",
                "/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:9092 >/dev/null",
            ],
            "interval": "10s",
            "timeout": "10s",
            "retries": 12,
            "start_period": "20s",
        },
        "restart": "unless-stopped",
    }


def _check_endpoints(site: Site) -> None:
    """With the servers in the project, the site must name them (and their in-network ports)."""
    problems: list[str] = []
    if site.central_kafka.bootstrap_servers != ["kafka-central:9092"]:
        problems.append("central_kafka.bootstrap_servers must be [kafka-central:9092]")
    if site.local_kafka is not None and site.local_kafka.bootstrap_servers != ["kafka-local:9092"]:
        problems.append("local_kafka.bootstrap_servers must be [kafka-local:9092]")
    for what, url in (
        ("registry.url", site.registry.url if site.registry else None),
        ("publisher.database.url", site.publisher.database.url if site.publisher.database else None),
    ):
        if url is not None and (urlsplit(url).hostname, urlsplit(url).port or 5432) != ("postgres", 5432):
            problems.append(f"{what} must name the server postgres:5432")
    if any(urlsplit(url).hostname != "opensearch" for url in site.opensearch.urls):
        problems.append("opensearch.urls must be [http://opensearch:9200]")
    if problems:
        raise RenderError(
            "compose.infrastructure runs the servers inside the project, so the site must point at them: "
            + "; ".join(problems)
        )


def _database_names(site: Site) -> tuple[str, str]:
    """(user, database) of the registry, for the PostgreSQL container's first start."""
    assert site.registry is not None
    parts = urlsplit(site.registry.url)
    return parts.username or "postgres", parts.path.lstrip("/") or "postgres"


def _infrastructure(site: Site, configs: list[ServiceConfig]) -> tuple[dict[str, Any], dict[str, Any]]:
    services: dict[str, Any] = {
        "kafka-central": _kafka("kafka-central", INFRASTRUCTURE["kafka-central"]),
    }
    if site.local_kafka is not None:
        services["kafka-local"] = _kafka("kafka-local", INFRASTRUCTURE["kafka-local"])
    volumes: dict[str, Any] = {}
    if site.registry is not None or site.publisher.database is not None:
        user, database = _database_names(site) if site.registry else ("postgres", "postgres")
        services["postgres"] = {
            "image": POSTGRES_IMAGE,
            "environment": {
                "POSTGRES_USER": user,
                "POSTGRES_DB": database,
                # A laptop's private network only: no password, like the local test bed.
                "POSTGRES_HOST_AUTH_METHOD": "trust",
            },
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "ports": [f"127.0.0.1:{INFRASTRUCTURE['postgres']}:5432"],
            "healthcheck": {
                "test": ["CMD-SHELL", f"pg_isready -U {user} -d {database}"],
                "interval": "5s",
                "timeout": "5s",
                "retries": 12,
            },
            "restart": "unless-stopped",
        }
        volumes["postgres-data"] = {}
    if site.opensearch.urls:
        services["opensearch"] = {
            "image": OPENSEARCH_IMAGE,
            "environment": {
                "discovery.type": "single-node",
                "DISABLE_SECURITY_PLUGIN": "true",
                "DISABLE_INSTALL_DEMO_CONFIG": "true",
                "OPENSEARCH_JAVA_OPTS": "-Xms512m -Xmx512m",
            },
            "ulimits": {"nofile": {"soft": 65536, "hard": 65536}},
            "volumes": ["opensearch-data:/usr/share/opensearch/data"],
            "ports": [f"127.0.0.1:{INFRASTRUCTURE['opensearch']}:9200"],
            "healthcheck": {
                "test": ["CMD-SHELL", "curl -fs http://localhost:9200/_cluster/health >/dev/null"],
                "interval": "10s",
                "timeout": "5s",
                "retries": 24,
            },
            "restart": "unless-stopped",
        }
        services["opensearch-dashboards"] = {
            "image": DASHBOARDS_IMAGE,
            "environment": {
                "OPENSEARCH_HOSTS": '["http://opensearch:9200"]',
                "DISABLE_SECURITY_DASHBOARDS_PLUGIN": "true",
            },
            "ports": [f"127.0.0.1:{INFRASTRUCTURE['opensearch-dashboards']}:5601"],
            "depends_on": {"opensearch": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
        }
        volumes["opensearch-data"] = {}
    scrape = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": f"ingestd-{config.service.value}",
                "static_configs": [
                    {
                        "targets": [f"{config.service.value}:{config.port}"],
                        "labels": {"instance_name": site.instance},
                    }
                ],
            }
            for config in configs
        ],
    }
    services["prometheus"] = {
        "image": PROMETHEUS_IMAGE,
        "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=7d"],
        "configs": [{"source": "prometheus", "target": "/etc/prometheus/prometheus.yml"}],
        "ports": [f"127.0.0.1:{INFRASTRUCTURE['prometheus']}:9090"],
        "restart": "unless-stopped",
    }
    return services, {"volumes": volumes, "prometheus": dump_yaml(scrape)}


def _dependencies(site: Site, config: ServiceConfig, infrastructure: dict[str, Any]) -> dict[str, Any]:
    wanted = {
        "daemon": ["kafka-local", "postgres", "opensearch"],
        "mirror": ["kafka-central", "kafka-local"],
        "publisher": ["kafka-central", "postgres"] if site.publisher.database else ["kafka-central"],
    }[config.service.value]
    return {name: {"condition": "service_healthy"} for name in wanted if name in infrastructure}


def _service(site: Site, config: ServiceConfig, infrastructure: dict[str, Any]) -> dict[str, Any]:
    name = config.service.value
    resources = site.service(config.service).resources
    service: dict[str, Any] = {"image": site.image.reference}
    if site.compose.build:
        service["build"] = {"context": ".", "dockerfile": "Dockerfile"}
    service["command"] = [
        f"{CONFIG_DIR}/{config.file_name}" if a == "{config}" else a for a in config.arguments
    ]
    environment = dict(config.environment)
    if name == "mirror":
        environment["INGESTD_MIRROR_INSTANCE"] = f"{site.instance}-mirror-0"
    service["environment"] = environment
    service["configs"] = [{"source": f"ingestd-{name}", "target": f"{CONFIG_DIR}/{config.file_name}"}]
    if config.secrets:
        service["secrets"] = list(config.secrets)
    service["ports"] = [f"127.0.0.1:{config.port}:{config.port}"]
    service["healthcheck"] = _healthcheck(config.port)
    if resources.limits.memory is not None:
        service["mem_limit"] = _bytes(resources.limits.memory)
    if resources.limits.cpu is not None:
        service["cpus"] = _cpus(resources.limits.cpu)
    service.update(
        {
            "read_only": True,
            "tmpfs": ["/tmp"],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "stop_grace_period": "60s",
            "restart": "unless-stopped",
        }
    )
    dependencies = _dependencies(site, config, infrastructure)
    if dependencies:
        service["depends_on"] = dependencies
    return service


def render_compose(loaded: LoadedSite) -> Rendering:
    """Render ``docker-compose.yml`` (and a note of the secret files it expects) for ``loaded``.

    Raises
    ------
    RenderError
        ``compose.infrastructure`` is on but the site's endpoints do not name the project's servers.
    """
    site = loaded.site
    configs = [
        service_config(site, service, lambda secret: f"/run/secrets/{secret}")
        for service in site.enabled_services
    ]
    infrastructure: dict[str, Any] = {}
    extra: dict[str, Any] = {"volumes": {}, "prometheus": None}
    if site.compose.infrastructure:
        _check_endpoints(site)
        infrastructure, extra = _infrastructure(site, configs)
    services = dict(infrastructure)
    for config in configs:
        services[config.service.value] = _service(site, config, infrastructure)
    header = generated_header(loaded.provenance, site.instance)
    compose_configs: dict[str, Any] = {
        f"ingestd-{config.service.value}": {"content": header + dump_yaml(config.document)}
        for config in configs
    }
    if extra["prometheus"] is not None:
        compose_configs["prometheus"] = {"content": extra["prometheus"]}
    document: dict[str, Any] = {
        "name": site.compose.project,
        "services": services,
        "configs": compose_configs,
    }
    secrets = sorted({secret for config in configs for secret in config.secrets})
    if secrets:
        document["secrets"] = {secret: {"file": site.compose_secret_file(secret)} for secret in secrets}
    if extra["volumes"]:
        document["volumes"] = extra["volumes"]
    usage = "# Usage: docker compose up --build -d; then `docker compose ps` shows every service's health.\n"
    if site.compose.infrastructure:
        ports = ", ".join(f"{name} {port}" for name, port in INFRASTRUCTURE.items() if name in services)
        usage += f"# Servers on 127.0.0.1: {ports}.\n"
    if secrets:
        usage += (
            "# Secret files expected beside this file: "
            + ", ".join(site.compose_secret_file(secret) for secret in secrets)
            + "\n"
        )
    rendering = Rendering(Target.compose)
    rendering.add(COMPOSE_FILE, header + usage + "\n" + dump_yaml(document))
    return rendering
