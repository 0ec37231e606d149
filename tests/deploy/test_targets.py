"""Every shipped site, in every environment, rendered for every target, passes that target's validator."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingestd.site import ServiceName, Target, check_site, load_site, render, template_unit_name, unit_name

from ._validators import (
    exposure,
    prepare_systemd_root,
    validate_compose,
    validate_kubernetes_object,
    verify_units,
)

SITES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sites"
FACILITY_SITES = ["frdf", "ukdf", "usdf"]
ENVIRONMENTS = ["prod", "test", "dev"]
SHIPPED = [(site, env) for site in FACILITY_SITES for env in ENVIRONMENTS] + [("laptop", None)]
IDS = [f"{site}-{env}" if env else site for site, env in SHIPPED]

MAX_EXPOSURE = 2.5
"""`systemd-analyze security` rates 0-10; below 3 it calls a unit's sandbox OK."""


def _load(site: str, env: str | None) -> Any:
    return load_site(SITES_DIR / f"{site}.yaml", environment=env)


@pytest.mark.parametrize(("site", "env"), SHIPPED, ids=IDS)
def test_site_checks_clean(site: str, env: str | None) -> None:
    """`ingestd site check`: every service loads its rendered file, every target renders."""
    report = check_site(_load(site, env))
    assert report.problems == []
    assert set(report.rendered) >= {"systemd", "kubernetes", "compose"}


@pytest.mark.parametrize(("site", "env"), SHIPPED, ids=IDS)
def test_kubernetes_manifests_validate(site: str, env: str | None) -> None:
    loaded = _load(site, env)
    rendering = render(loaded, Target.kubernetes)
    kinds: list[str] = []
    for rendered in rendering.files:
        if rendered.path.name == "kustomization.yaml":
            kustomization = yaml.safe_load(rendered.content)
            listed = {str(f.path) for f in rendering.files if f.path.name != "kustomization.yaml"}
            # The registry migration is applied on purpose before an upgrade, not with the rest.
            assert set(kustomization["resources"]) == listed - {"registry-upgrade.yaml"}
            continue
        for document in yaml.safe_load_all(rendered.content):
            validate_kubernetes_object(document)
            kinds.append(document["kind"])
            _assert_kubernetes_policy(document)
    expected = {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    }
    assert expected <= set(kinds)
    if ServiceName.mirror in loaded.site.enabled_services:
        assert "StatefulSet" in kinds
    if {ServiceName.daemon, ServiceName.publisher} & set(loaded.site.enabled_services):
        assert "Deployment" in kinds
    if ServiceName.daemon in loaded.site.enabled_services:
        assert "Job" in kinds, "the registry migration Job"


def _assert_no_inline_secret(value: Any, where: str) -> None:
    """No key named like a secret holds a value: only files, secret references or null."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("password", "key_password") and item is not None:
                assert isinstance(item, dict), f"{where}.{key} holds a value"
                assert set(item) == {"secret"}, f"{where}.{key} holds a value"
            _assert_no_inline_secret(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_no_inline_secret(item, f"{where}.{index}")


def _assert_kubernetes_policy(document: dict[str, Any]) -> None:
    """What the issue asks of every workload, beyond schema validity."""
    if document["kind"] == "ConfigMap":
        for name, content in document["data"].items():
            _assert_no_inline_secret(yaml.safe_load(content), name)
    if document["kind"] not in ("Deployment", "StatefulSet"):
        return
    pod = document["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "memory" in container["resources"]["limits"]
        assert "cpu" in container["resources"]["requests"]
        assert all("value" in env or "valueFrom" in env for env in container["env"])
        assert not any("PASSWORD" in env["name"] for env in container["env"]), "secret passed as a variable"
    for volume in pod["volumes"]:
        if "projected" in volume:
            assert all("secret" in source for source in volume["projected"]["sources"])


@pytest.mark.parametrize(("site", "env"), SHIPPED, ids=IDS)
def test_compose_validates(site: str, env: str | None) -> None:
    loaded = _load(site, env)
    if loaded.site.compose.infrastructure is False and env is None:
        pytest.fail("every shipped site renders for compose")  # pragma: no cover
    document = yaml.safe_load(render(loaded, Target.compose).get("docker-compose.yml"))
    validate_compose(document)
    for service in loaded.site.enabled_services:
        container = document["services"][service.value]
        assert container["read_only"] is True
        assert container["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in container["security_opt"]
        assert container["healthcheck"]["test"][0] == "CMD"


@pytest.mark.parametrize(("site", "env"), SHIPPED, ids=IDS)
def test_systemd_units_verify(site: str, env: str | None, tmp_path: Path) -> None:
    """The install script puts the units in place; `systemd-analyze verify` finds nothing to say."""
    loaded = _load(site, env)
    rendered = tmp_path / "rendered"
    render(loaded, Target.systemd).write(rendered)
    root = tmp_path / "root"
    completed = subprocess.run(
        ["sh", str(rendered / "install.sh")],
        env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    prepare_systemd_root(root, Path(str(loaded.site.install.prefix)) / "bin" / "ingestd")
    instance = loaded.site.instance
    units = [unit_name(service, instance) for service in loaded.site.enabled_services]
    if ServiceName.daemon in loaded.site.enabled_services:
        units.append(f"ingestd-registry-upgrade@{instance}.service")
    assert verify_units(root, [*units, f"ingestd@{instance}.target"]) == ""
    for unit in units:
        score = exposure(root, unit)
        assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} > {MAX_EXPOSURE}"
    for service in loaded.site.enabled_services:
        assert (root / "etc/systemd/system" / template_unit_name(service)).is_file()
        assert (
            root / str(loaded.site.install.config_dir).lstrip("/") / instance / f"{service.value}.yaml"
        ).is_file()


MIRROR_SITES = [(site, env) for site, env in SHIPPED if site != "usdf"]


@pytest.mark.parametrize(("site", "env"), MIRROR_SITES, ids=[i for i in IDS if not i.startswith("usdf")])
def test_mm2_renders_for_strimzi_and_dedicated_mode(site: str, env: str | None) -> None:
    """The Strimzi resource validates against its CRD; mm2.properties names the site's clusters and files."""
    loaded = _load(site, env)
    rendering = render(loaded, Target.mm2)
    validate_kubernetes_object(yaml.safe_load(rendering.get("kafkamirrormaker2.yaml")))
    properties = _properties(rendering.get("mm2.properties"))
    source, target = loaded.site.mirror.source_alias, loaded.site.name
    assert properties["clusters"] == f"{source}, {target}"
    assert properties[f"{source}.bootstrap.servers"] == ",".join(loaded.site.central_kafka.bootstrap_servers)
    assert loaded.site.local_kafka is not None
    assert properties[f"{target}.bootstrap.servers"] == ",".join(loaded.site.local_kafka.bootstrap_servers)
    assert properties[f"{target}.exactly.once.source.support"] == "enabled"
    for key, value in properties.items():
        assert "ingestd-site-" not in value, f"{key} points at a temporary placeholder: {value}"
    for secret in {name for name, _ in loaded.site.secret_uses()}:
        folder = str(loaded.site.secret_file(secret).parent)
        if secret in rendering.get("mm2.properties"):
            assert folder in rendering.get("mm2.properties")


def _properties(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result


def test_usdf_has_no_mirror_to_render() -> None:
    from ingestd.site import RenderError

    with pytest.raises(RenderError, match="facility"):
        render(_load("usdf", "prod"), Target.mm2)
