"""The repository's docker-compose.yml and Dockerfile, and the validators themselves (they must bite)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ingestd.site import Target, load_site, render

from ._validators import validate_compose, validate_kubernetes_object

REPO = Path(__file__).resolve().parents[2]
LAPTOP = REPO / "deploy" / "sites" / "laptop.yaml"


def test_root_compose_file_is_the_rendered_laptop_site() -> None:
    """docker-compose.yml is generated: edit deploy/sites/laptop.yaml and render it again."""
    expected = render(load_site(LAPTOP), Target.compose).get("docker-compose.yml")
    actual = (REPO / "docker-compose.yml").read_text()
    assert actual == expected, (
        "docker-compose.yml differs from its site; run: "
        "ingestd site render deploy/sites/laptop.yaml --target compose -o ."
    )


def test_root_compose_file_runs_the_whole_stack() -> None:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    validate_compose(document)
    services = document["services"]
    assert {
        "kafka-central",
        "kafka-local",
        "postgres",
        "opensearch",
        "opensearch-dashboards",
        "prometheus",
        "daemon",
        "mirror",
        "publisher",
    } <= set(services)
    for name in ("daemon", "mirror", "publisher"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    scrape = yaml.safe_load(document["configs"]["prometheus"]["content"])
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"daemon:8080", "mirror:8081", "publisher:8082"}


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    import dockerfile

    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    known = {"FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "LABEL", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}
    assert {c.cmd for c in commands} <= known
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = commands[commands.index(stages[-1]) :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the runtime stage sets its user"
    assert users[-1].split(":")[0] not in ("0", "root"), "the runtime stage runs as a non-root user"
    assert users[-1].split(":")[0] == "10001", "the UID the Kubernetes manifests run as"
    assert any(c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final)
    entrypoint = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint
    assert entrypoint[-1].json
    assert entrypoint[-1].value == ("ingestd",)
    copied = {c.value[0] for c in commands if c.cmd == "COPY" and not c.flags}
    for package in ("ingestd", "butler_registry", "mirror", "publisher", "monitoring"):
        assert package in copied, f"the image lacks the {package} package"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored


def _deployment() -> dict[str, object]:
    loaded = load_site(REPO / "deploy" / "sites" / "frdf.yaml", environment="prod")
    documents = list(yaml.safe_load_all(render(loaded, Target.kubernetes).get("daemon.yaml")))
    return next(d for d in documents if d["kind"] == "Deployment")


def test_kubernetes_validator_refuses_unknown_fields() -> None:
    deployment = _deployment()
    validate_kubernetes_object(deployment)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicaz"] = 2  # type: ignore[index]
    with pytest.raises(AssertionError, match="replicaz"):
        validate_kubernetes_object(broken)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"  # type: ignore[index]
    with pytest.raises(AssertionError):
        validate_kubernetes_object(wrong_type)


def test_crd_validator_refuses_unknown_fields() -> None:
    loaded = load_site(REPO / "deploy" / "sites" / "frdf.yaml", environment="prod")
    monitor = yaml.safe_load(render(loaded, Target.kubernetes).get("servicemonitor.yaml"))
    validate_kubernetes_object(monitor)
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match="intervall"):
        validate_kubernetes_object(monitor)
    resource = yaml.safe_load(render(loaded, Target.mm2).get("kafkamirrormaker2.yaml"))
    resource["spec"]["mirrors"][0]["topicsPatern"] = "x"
    with pytest.raises(AssertionError, match="topicsPatern"):
        validate_kubernetes_object(resource)


def test_compose_validator_refuses_unknown_keys_and_dangling_references() -> None:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken = copy.deepcopy(document)
    broken["services"]["daemon"]["restrat"] = "always"
    with pytest.raises(AssertionError, match="restrat"):
        validate_compose(broken)
    dangling = copy.deepcopy(document)
    dangling["services"]["daemon"]["depends_on"]["kafka-nowhere"] = {"condition": "service_started"}
    with pytest.raises(AssertionError, match="kafka-nowhere"):
        validate_compose(dangling)
