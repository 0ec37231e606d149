"""Offline validators of rendered deployments: Kubernetes schemas, CRD schemas, compose spec, systemd.

Schema files under ``data/schemas`` are upstream data, shipped unchanged (see the
README there for their sources and licences):

- the compose specification's JSON schema (compose-spec/compose-spec);
- the Strimzi 0.47.0 ``KafkaMirrorMaker2`` CRD (``kafka.strimzi.io/v1beta2``, Kafka 3.9);
- the prometheus-operator 0.93.0 ``ServiceMonitor`` CRD.

Built-in Kubernetes kinds are validated with the schemas bundled by the
``kubernetes-validate`` package, in strict mode (unknown fields refused, as
``kubectl apply`` does with server-side field validation).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).parent / "data" / "schemas"
KUBERNETES_VERSION = "1.30"
"""Oldest Kubernetes the manifests target (a release the facilities' clusters run or exceed)."""

CRD_FILES = {
    ("kafka.strimzi.io/v1beta2", "KafkaMirrorMaker2"): "strimzi-0.47.0-kafkamirrormaker2-crd.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-0.93.0-servicemonitor-crd.yaml",
}


def _close_objects(schema: Any) -> Any:
    """Refuse unknown fields where the CRD lists the fields and does not preserve unknown ones.

    That is how the API server treats a structural schema with strict field
    validation (what ``kubectl apply`` asks for by default). Only typed object
    nodes declare fields; ``properties`` inside ``oneOf``/``anyOf`` branches only
    constrain values, so those stay open.
    """
    if isinstance(schema, dict):
        closed = {key: _close_objects(value) for key, value in schema.items()}
        if (
            closed.get("type") == "object"
            and "properties" in closed
            and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")
        ):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_close_objects(item) for item in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The JSON schema of ``kind`` at ``api_version`` from the shipped CRD."""
    document = yaml.safe_load((SCHEMAS / CRD_FILES[(api_version, kind)]).read_text())
    group, version = api_version.split("/")
    assert document["spec"]["group"] == group
    for entry in document["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", True):
            schema: dict[str, Any] = _close_objects(entry["schema"]["openAPIV3Schema"])
            return schema
    raise AssertionError(f"{CRD_FILES[(api_version, kind)]} does not serve {api_version}")


@cache
def _object_meta_validator() -> jsonschema.protocols.Validator:
    import importlib.resources

    import kubernetes_validate
    from referencing import Registry, Resource

    folder = importlib.resources.files(kubernetes_validate) / "kubernetes-json-schema"
    versions = sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(f"v{KUBERNETES_VERSION}.") and "strict" in p.name
    )
    base = folder / versions[0]
    schema = json.loads((base / "objectmeta-meta-v1.json").read_text())
    definitions = json.loads((base / "_definitions.json").read_text())
    registry: Registry[Any] = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kubernetes_object(document: dict[str, Any]) -> None:
    """Validate one manifest: built-in kinds with kubernetes-validate, CRDs with their shipped schema.

    Raises
    ------
    AssertionError
        With the object's kind/name and the first schema violation.
    """
    import kubernetes_validate

    key = (document.get("apiVersion"), document.get("kind"))
    name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
    if key in CRD_FILES:
        errors = sorted(
            jsonschema.Draft7Validator(crd_schema(*key)).iter_errors(document), key=lambda e: list(e.path)
        )
        errors += list(_object_meta_validator().iter_errors(document.get("metadata", {})))
        assert not errors, f"{name}: {errors[0].message} at {list(errors[0].absolute_path)}"
        return
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        raise AssertionError(f"{name}: {error.message} at {list(error.absolute_path)}") from None


@cache
def compose_validator() -> jsonschema.protocols.Validator:
    """The compose specification's schema."""
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def validate_compose(document: dict[str, Any]) -> None:
    """Validate a compose file against the compose specification, plus references between its parts."""
    errors = sorted(compose_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, f"compose: {errors[0].message} at {list(errors[0].absolute_path)}"
    services = document["services"]
    configs = document.get("configs", {})
    secrets = document.get("secrets", {})
    host_ports: list[str] = []
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if service["depends_on"][dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health check"
        for config in service.get("configs", []):
            assert config["source"] in configs, f"{name} uses undeclared config {config['source']}"
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in secrets, f"{name} uses undeclared secret {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in document.get("volumes", {}), f"{name} uses undeclared volume {source}"
        host_ports += [port.rsplit(":", 1)[0] for port in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"host ports published twice: {host_ports}"


def systemd_analyze() -> str:
    """Path of systemd-analyze; the test fails (never skips) without it."""
    path = shutil.which("systemd-analyze")
    assert path is not None, "systemd-analyze is needed to verify units: apt-get install systemd"
    return path


def prepare_systemd_root(root: Path, executable: Path) -> None:
    """A file-system root where ``systemd-analyze --root`` can load the rendered units.

    It needs the distribution's own units (sysinit.target ...) and the
    executable named by ExecStart.
    """
    system_units = Path("/lib/systemd/system")
    assert system_units.is_dir(), "the host's systemd units (/lib/systemd/system) are needed"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    target = root / executable.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o755)


def verify_units(root: Path, units: list[str]) -> str:
    """Run ``systemd-analyze verify`` on installed units; return its complaints (empty when clean)."""
    completed = subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", *(f"/etc/systemd/system/{unit}" for unit in units)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    complaints = (completed.stdout + completed.stderr).strip()
    if completed.returncode != 0 and not complaints:
        complaints = f"systemd-analyze verify exited {completed.returncode}"
    return complaints


def exposure(root: Path, unit: str) -> float:
    """The overall exposure score ``systemd-analyze security --offline`` gives the unit (0 best, 10 worst)."""
    completed = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    for line in completed.stdout.splitlines():
        if "Overall exposure level" in line:
            return float(line.split(":", 1)[1].split()[0])
    raise AssertionError(f"no exposure level in:\n{completed.stdout}\n{completed.stderr}")
