"""Kubernetes target: plain manifests (and a kustomization listing them) for one site instance.

Per enabled service: a Deployment (daemon, publisher: they share work through
Kafka groups and row locks) or a StatefulSet (mirror: a stable pod name is its
stable transactional id, so a restarted pod fences its own unfinished
transaction), a headless Service for scraping, a PodDisruptionBudget and a
NetworkPolicy. Shared: a ConfigMap holding every service's configuration file
and the merged site, a ServiceAccount without API token, a ServiceMonitor.

Secrets are mounted read-only from existing Secrets (their names and keys come
from the site's catalogue); nothing secret is ever written into a manifest. A
configuration change changes the pod template's checksum annotation, so
``kubectl apply`` rolls the pods.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from ._load import LoadedSite
from ._model import ServiceName, Site
from ._output import Rendering, Target, dump_yaml, generated_header
from ._services import MigrationJob, SecretPath, ServiceConfig, migration_job, service_config

__all__ = ["CONFIG_MOUNT", "MIGRATION_FILE", "SECRETS_MOUNT", "object_name", "render_kubernetes"]

CONFIG_MOUNT: Final = "/etc/ingestd"
"""Where the ConfigMap's files appear in the containers."""

SECRETS_MOUNT: Final = "/run/secrets/ingestd"
"""Where the referenced Secrets' keys appear, one file per secret name."""

_STATE_MOUNT: Final = "/var/lib/ingestd"
_PART_OF: Final = "ingestd"


def object_name(site: Site, service: ServiceName | None = None) -> str:
    """``ingestd-<instance>[-<service>]``: unique even when several instances share a namespace."""
    base = f"ingestd-{site.instance}"
    return base if service is None else f"{base}-{service.value}"


def _labels(site: Site, service: ServiceName | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "ingestd",
        "app.kubernetes.io/instance": site.instance,
        "app.kubernetes.io/version": site.image.tag,
        "app.kubernetes.io/part-of": _PART_OF,
        "app.kubernetes.io/managed-by": "ingestd-site",
        **site.kubernetes.labels,
    }
    if service is not None:
        labels["app.kubernetes.io/component"] = service.value
    return labels


def _selector(site: Site, service: ServiceName | None = None) -> dict[str, str]:
    selector = {"app.kubernetes.io/name": "ingestd", "app.kubernetes.io/instance": site.instance}
    if service is not None:
        selector["app.kubernetes.io/component"] = service.value
    return selector


def _metadata(site: Site, name: str, service: ServiceName | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": site.namespace, "labels": _labels(site, service), **extra}


def _resources(site: Site, service: ServiceName) -> dict[str, Any]:
    resources = site.service(service).resources
    result: dict[str, Any] = {}
    for part in ("requests", "limits"):
        amounts = getattr(resources, part).model_dump(exclude_none=True)
        if amounts:
            result[part] = amounts
    return result


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _checksum(config: ServiceConfig, rendered: str) -> str:
    return hashlib.sha256(rendered.encode("utf-8")).hexdigest()


def _pod_template(site: Site, config: ServiceConfig, rendered: str) -> dict[str, Any]:
    service = config.service
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in config.environment.items()]
    if service is ServiceName.mirror:
        # The pod name is stable in a StatefulSet: it makes the mirror's transactional id.
        env.append(
            {"name": "INGESTD_MIRROR_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
    mounts: list[dict[str, Any]] = [
        {
            "name": "config",
            "mountPath": f"{CONFIG_MOUNT}/{config.file_name}",
            "subPath": config.file_name,
            "readOnly": True,
        },
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "state", "mountPath": _STATE_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": object_name(site),
                "items": [{"key": config.file_name, "path": config.file_name}],
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    if config.secrets:
        volumes.append(_secret_volume(site, config.secrets))
        mounts.append({"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True})
    uid = site.kubernetes.run_as_user
    container: dict[str, Any] = {
        "name": service.value,
        "image": site.image.reference,
        "imagePullPolicy": site.image.pull_policy,
        "args": [f"{CONFIG_MOUNT}/{config.file_name}" if a == "{config}" else a for a in config.arguments],
        "workingDir": _STATE_MOUNT,
        "env": env,
        "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
        # Startup: up to 5 minutes to first serve /healthz; then liveness restarts a hung loop,
        # readiness reports what blocks the work (it gates rollouts and disruption budgets).
        "startupProbe": _probe("/healthz", 5, 60),
        "livenessProbe": _probe("/healthz", 15, 4),
        "readinessProbe": _probe("/readyz", 10, 3),
        "resources": _resources(site, service),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    return {
        "metadata": {
            "labels": _labels(site, service),
            "annotations": {"ingestd.lsst.io/config-sha256": _checksum(config, rendered)},
        },
        "spec": {
            "serviceAccountName": object_name(site),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 60,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": uid,
                "fsGroup": uid,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }


def _workload(site: Site, config: ServiceConfig, rendered: str) -> dict[str, Any]:
    service = config.service
    name = object_name(site, service)
    spec: dict[str, Any] = {
        "replicas": site.service(service).replicas,
        "selector": {"matchLabels": _selector(site, service)},
        "template": _pod_template(site, config, rendered),
    }
    if service is ServiceName.mirror:
        spec["serviceName"] = name
        spec["podManagementPolicy"] = "Parallel"
        spec["updateStrategy"] = {"type": "RollingUpdate"}
        kind = "StatefulSet"
    else:
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        spec["revisionHistoryLimit"] = 5
        kind = "Deployment"
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": _metadata(site, name, service), "spec": spec}


def _service(site: Site, config: ServiceConfig) -> dict[str, Any]:
    name = object_name(site, config.service)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(site, name, config.service),
        "spec": {
            # Only for scraping: headless, and listing not-ready pods too, whose metrics matter most.
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": _selector(site, config.service),
            "ports": [{"name": "http", "port": config.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _disruption_budget(site: Site, service: ServiceName) -> dict[str, Any]:
    name = object_name(site, service)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(site, name, service),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(site, service)}},
    }


def _egress_ports(site: Site, service: ServiceName) -> list[int]:
    def kafka_ports(servers: list[str]) -> set[int]:
        return {int(server.rpartition(":")[2]) for server in servers}

    ports: set[int] = set()
    if service in (ServiceName.mirror, ServiceName.publisher):
        ports |= kafka_ports(site.central_kafka.bootstrap_servers)
    if service in (ServiceName.mirror, ServiceName.daemon) and site.local_kafka is not None:
        ports |= kafka_ports(site.local_kafka.bootstrap_servers)
    if service is ServiceName.daemon:
        if site.registry is not None and site.registry.port is not None:
            ports.add(site.registry.port)
        ports |= set(site.opensearch.ports)
    if service is ServiceName.publisher and site.publisher.database is not None:
        from urllib.parse import urlsplit

        try:
            ports.add(urlsplit(site.publisher.database.url).port or 5432)
        except ValueError:
            ports.add(5432)
    return sorted(ports)


def _network_policy(site: Site, config: ServiceConfig) -> dict[str, Any]:
    name = object_name(site, config.service)
    dns = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(site, name, config.service),
        "spec": {
            "podSelector": {"matchLabels": _selector(site, config.service)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": site.kubernetes.prometheus_namespace
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": "http"}],
                }
            ],
            # Kafka brokers, databases and OpenSearch live outside the cluster at most sites:
            # egress is limited by port, not by address.
            "egress": [
                {"ports": dns},
                {
                    "ports": [
                        {"protocol": "TCP", "port": port} for port in _egress_ports(site, config.service)
                    ]
                },
            ],
        },
    }


def _service_monitor(site: Site) -> dict[str, Any]:
    monitor = site.kubernetes.service_monitor
    labels = {**_labels(site), **monitor.labels}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": object_name(site), "namespace": site.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": _selector(site)},
            "namespaceSelector": {"matchNames": [site.namespace]},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": monitor.interval, "scheme": "http"}
            ],
        },
    }


MIGRATION_FILE: Final = "registry-upgrade.yaml"
"""Not in the kustomization: applied on purpose before a daemon upgrade (docs/OPERATIONS.md)."""


def _secret_volume(site: Site, secrets: tuple[str, ...]) -> dict[str, Any]:
    sources = []
    for secret in secrets:
        secret_object, key = site.kubernetes_secret(secret)
        sources.append({"secret": {"name": secret_object, "items": [{"key": key, "path": secret}]}})
    return {"name": "secrets", "projected": {"defaultMode": 0o440, "sources": sources}}


def _migration(site: Site, job: MigrationJob) -> dict[str, Any]:
    name = f"{object_name(site)}-registry-upgrade"
    uid = site.kubernetes.run_as_user
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    if job.secrets:
        volumes.append(_secret_volume(site, job.secrets))
        mounts.append({"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True})
    labels = _labels(site)
    labels["app.kubernetes.io/component"] = "registry-upgrade"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": site.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86_400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "serviceAccountName": object_name(site),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "registry-upgrade",
                            "image": site.image.reference,
                            "imagePullPolicy": site.image.pull_policy,
                            "args": list(job.arguments),
                            "env": [{"name": key, "value": value} for key, value in job.environment.items()],
                            "resources": _resources(site, ServiceName.daemon),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def _secret_resolver() -> SecretPath:
    return lambda secret: f"{SECRETS_MOUNT}/{secret}"


def _documents(*documents: dict[str, Any]) -> str:
    return "---\n".join(dump_yaml(document) for document in documents)


def render_kubernetes(loaded: LoadedSite) -> Rendering:
    """Render the manifests of ``loaded`` (one file per service plus shared objects and a kustomization)."""
    site = loaded.site
    header = generated_header(loaded.provenance, site.instance)
    rendering = Rendering(Target.kubernetes)
    configs = [service_config(site, service, _secret_resolver()) for service in site.enabled_services]
    config_files = {config.file_name: header + dump_yaml(config.document) for config in configs}
    config_files["site.yaml"] = header + dump_yaml(
        loaded.site.model_dump(mode="json", exclude_defaults=False)
    )
    shared_name = object_name(site)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(site, shared_name),
        "data": config_files,
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(site, shared_name),
        "automountServiceAccountToken": False,
    }
    files = ["config.yaml"]
    rendering.add("config.yaml", header + _documents(account, config_map))
    for config in configs:
        objects = [
            _workload(site, config, config_files[config.file_name]),
            _service(site, config),
            _disruption_budget(site, config.service),
        ]
        if site.kubernetes.network_policy:
            objects.append(_network_policy(site, config))
        file_name = f"{config.service.value}.yaml"
        rendering.add(file_name, header + _documents(*objects))
        files.append(file_name)
    if site.kubernetes.service_monitor.enabled:
        rendering.add("servicemonitor.yaml", header + _documents(_service_monitor(site)))
        files.append("servicemonitor.yaml")
    job = migration_job(site, _secret_resolver())
    if job is not None:
        rendering.add(MIGRATION_FILE, header + _documents(_migration(site, job)))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": site.namespace,
        "resources": files,
    }
    rendering.add("kustomization.yaml", header + dump_yaml(kustomization))
    return rendering
