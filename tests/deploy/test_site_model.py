"""The site model's rules, and one value of a site file reaching every target."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from ingestd.site import (
    RenderError,
    ServiceName,
    SiteValidationError,
    Target,
    applicable_targets,
    load_site,
    render,
    service_config,
)

SITES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sites"


def overlay(tmp_path: Path, text: str, name: str = "overlay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text))
    return path


def rendered_text(loaded: object) -> dict[str, str]:
    texts = {}
    for target in applicable_targets(loaded):  # type: ignore[arg-type]
        texts[target.value] = "\n".join(f.content for f in render(loaded, target).files)  # type: ignore[arg-type]
    return texts


def test_one_registry_url_reaches_every_target(tmp_path: Path) -> None:
    """Acceptance: changing one value in the site file changes it in every rendered target."""
    before = load_site(SITES_DIR / "frdf.yaml", environment="prod")
    new_url = "postgresql://ingestd@registry-replacement.example.org:6543/butler_moved"
    changed = load_site(
        SITES_DIR / "frdf.yaml",
        environment="prod",
        overlays=[overlay(tmp_path, f"registry: {{url: '{new_url}'}}\n")],
    )
    old_url = before.site.registry.url  # type: ignore[union-attr]
    for target, text in rendered_text(changed).items():
        if target == Target.mm2.value:
            continue  # MirrorMaker 2 has no registry
        assert new_url in text, f"{target} lacks the new registry URL"
        assert old_url not in text, f"{target} still has the old registry URL"
    kubernetes = render(changed, Target.kubernetes)
    ports = [
        rule["port"]
        for document in yaml.safe_load_all(kubernetes.get("daemon.yaml"))
        if document["kind"] == "NetworkPolicy"
        for egress in document["spec"]["egress"]
        for rule in egress["ports"]
    ]
    assert 6543 in ports, "the NetworkPolicy follows the registry's port"


def test_one_bootstrap_list_reaches_every_target(tmp_path: Path) -> None:
    servers = "kafka-central-moved.example.org:9192"
    changed = load_site(
        SITES_DIR / "frdf.yaml",
        environment="test",
        overlays=[overlay(tmp_path, f"central_kafka: {{bootstrap_servers: ['{servers}']}}\n")],
    )
    texts = rendered_text(changed)
    assert set(texts) == {"systemd", "kubernetes", "compose", "mm2"}
    for target, text in texts.items():
        assert servers in text, target
        assert "kafka.usdf.example.org" not in text, target


def test_replication_factor_is_written_once_and_used_by_every_creator(tmp_path: Path) -> None:
    changed = load_site(
        SITES_DIR / "frdf.yaml",
        environment="prod",
        overlays=[overlay(tmp_path, "local_kafka: {replication_factor: 5}\n")],
    )
    daemon = service_config(changed.site, ServiceName.daemon, str).document
    mirror = service_config(changed.site, ServiceName.mirror, str).document
    assert daemon["dead_letters"]["replication_factor"] == 5
    assert mirror["target_replication_factor"] == 5


def test_secrets_must_be_declared(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "registry: {password: {secret: not-declared}}\n")
    with pytest.raises(SiteValidationError, match="not-declared"):
        load_site(SITES_DIR / "frdf.yaml", overlays=[bad])


def test_credentials_follow_the_protocol(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "local_kafka: {security: {protocol: PLAINTEXT}}\n")
    with pytest.raises(SiteValidationError, match="PLAINTEXT takes no credentials"):
        load_site(SITES_DIR / "frdf.yaml", overlays=[bad])
    missing = overlay(tmp_path, "local_kafka: {security: {protocol: SASL_SSL, username: null}}\n", "m.yaml")
    with pytest.raises(SiteValidationError, match="SASL_SSL needs username and password"):
        load_site(SITES_DIR / "frdf.yaml", overlays=[missing])


def test_passwords_never_go_into_urls(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "registry: {url: 'postgresql://ingestd:hunter2@db:5432/butler'}\n")
    with pytest.raises(SiteValidationError, match="must not contain a password"):
        load_site(SITES_DIR / "frdf.yaml", overlays=[bad])


def test_ports_of_one_site_are_distinct(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "mirror: {port: 8080}\n")
    with pytest.raises(SiteValidationError, match="both 8080"):
        load_site(SITES_DIR / "frdf.yaml", overlays=[bad])


def test_service_config_cannot_override_derived_values(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "daemon: {config: {registry: {url: 'sqlite:///x.db'}}}\n")
    loaded = load_site(SITES_DIR / "frdf.yaml", environment="dev", overlays=[bad])
    with pytest.raises(
        SiteValidationError, match=r"daemon\.config\.registry\.url: derived from the site file"
    ):
        render(loaded, Target.systemd)


def test_service_config_is_checked_by_the_service_itself(tmp_path: Path) -> None:
    from ingestd.site import check_site

    bad = overlay(tmp_path, "daemon: {config: {batching: {max_event: 10}}}\n")
    report = check_site(load_site(SITES_DIR / "frdf.yaml", environment="dev", overlays=[bad]))
    assert any("daemon refuses" in p and "batching.max_event" in p for p in report.problems), report.problems


def test_a_running_service_needs_its_pieces(tmp_path: Path) -> None:
    site = tmp_path / "solo.yaml"
    site.write_text(f"extends: {SITES_DIR / 'base.yaml'}\nname: solo\ndaemon: {{enabled: true}}\n")
    with pytest.raises(SiteValidationError, match="facility is required"):
        load_site(site)
    nothing = tmp_path / "idle.yaml"
    nothing.write_text(f"extends: {SITES_DIR / 'base.yaml'}\nname: idle\n")
    with pytest.raises(SiteValidationError, match="no service is enabled"):
        load_site(nothing)


def test_compose_infrastructure_needs_its_endpoints(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "registry: {url: 'postgresql://ingestd@elsewhere:5432/ingestd'}\n")
    loaded = load_site(SITES_DIR / "laptop.yaml", overlays=[bad])
    with pytest.raises(RenderError, match=r"registry\.url must name the server postgres:5432"):
        render(loaded, Target.compose)


def test_daemon_topics_follow_the_site_map() -> None:
    import re

    loaded = load_site(SITES_DIR / "ukdf.yaml", environment="prod")
    consumer = service_config(loaded.site, ServiceName.daemon, str).document["consumer"]
    pattern = re.compile(consumer["topic_pattern"])
    assert pattern.fullmatch("RAL_BUTLER_DISK-dp1")
    assert pattern.fullmatch("LANCS_BUTLER_DISK-raw")
    assert not pattern.fullmatch("IN2P3_BUTLER_DISK-dp1")
    assert "(?" not in consumer["topic_pattern"], "librdkafka's regular expressions have no (?...) groups"
    assert consumer["source_aliases"] == ["usdf"]


def test_secrets_are_mounted_only_where_used() -> None:
    loaded = load_site(SITES_DIR / "frdf.yaml", environment="prod")
    daemon = service_config(loaded.site, ServiceName.daemon, str)
    mirror = service_config(loaded.site, ServiceName.mirror, str)
    assert set(daemon.secrets) == {
        "registry-password",
        "kafka-local-ca",
        "kafka-local-password",
        "opensearch-password",
    }
    assert set(mirror.secrets) == {"kafka-local-ca", "kafka-local-password"}
    dropin = render(loaded, Target.systemd).get("systemd/ingestd-mirror@frdf-prod.service.d/10-site.conf")
    assert "registry-password" not in dropin
    assert (
        "LoadCredential=kafka-local-password:/etc/ingestd/frdf-prod/credentials/kafka-local-password"
        in dropin
    )
