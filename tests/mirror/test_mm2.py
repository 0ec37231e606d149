"""The MirrorMaker 2 renderer: outputs parse, say what they must, and the checked-in examples are current.

The real MirrorMaker 2 runs the rendered properties in ``test_security.py``
(mTLS) and in ``ingestd bench mirror`` (plaintext); here the outputs are checked
without servers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror import MirrorSettings, Mm2RenderError, load_mirror_settings
from mirror.mm2 import Mm2Options, StrimziSecrets, render_mm2_properties, render_strimzi_mirrormaker2

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "deploy" / "mm2"
EXAMPLE_PREFIX = "/etc/ingestd/"
REGENERATE = os.environ.get("INGESTD_REGENERATE_MM2_EXAMPLES") == "1"


def parse_properties(text: str) -> dict[str, str]:
    """Parse ``key = value`` lines the way java.util.Properties does (the subset the renderer writes)."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, _, value = stripped.partition("=")
        unescaped = re.sub(r"\\(.)", lambda m: m.group(1), value.strip())
        result[key.strip()] = unescaped
    return result


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    names = ("ca.crt", "client.crt", "client.key", "password")
    for name in names:
        (tmp_path / name).write_text("placeholder\n")
    return {name: tmp_path / name for name in names}


def _settings(files: dict[str, Path], **fields: Any) -> MirrorSettings:
    values: dict[str, Any] = {
        "source": {
            "bootstrap_servers": "usdf-1:9094,usdf-2:9094",
            "security": {
                "protocol": "SSL",
                "ca_location": files["ca.crt"],
                "certificate_location": files["client.crt"],
                "key_location": files["client.key"],
            },
            "librdkafka": {"socket.keepalive.enable": True},
        },
        "target": {"bootstrap_servers": "local:9092"},
        "target_alias": "frdf",
        "selection": {
            "topics": ["special-topic"],
            "facility": "FrDF",
            "site_map": {"facilities": [{"name": "FrDF", "rses": ["IN2P3_.*"]}]},
        },
    }
    values.update(fields)
    return MirrorSettings(**values)


def test_properties_identity_mtls(files: dict[str, Path]) -> None:
    settings = _settings(files)
    props = parse_properties(render_mm2_properties(settings))
    assert props["clusters"] == "usdf, frdf"
    assert props["usdf.bootstrap.servers"] == "usdf-1:9094,usdf-2:9094"
    assert props["frdf.bootstrap.servers"] == "local:9092"
    # mTLS with PEM files, read through the DirectoryConfigProvider (never copied into the file).
    assert props["usdf.security.protocol"] == "SSL"
    assert props["usdf.ssl.truststore.type"] == "PEM"
    assert props["usdf.ssl.truststore.location"] == str(files["ca.crt"])
    assert (
        props["usdf.ssl.keystore.certificate.chain"]
        == f"${{directory:{files['client.crt'].parent}:client.crt}}"
    )
    assert props["usdf.ssl.keystore.key"] == f"${{directory:{files['client.key'].parent}:client.key}}"
    assert "DirectoryConfigProvider" in props["config.providers.directory.class"]
    # One direction, the same topics and names as `ingestd mirror`.
    assert props["usdf->frdf.enabled"] == "true"
    assert props["frdf->usdf.enabled"] == "false"
    patterns = settings.selection.selector().include_patterns()
    assert props["usdf->frdf.topics"] == ", ".join(patterns)
    assert props["usdf->frdf.replication.policy.class"].endswith(".IdentityReplicationPolicy")
    # Exactly-once, committed reads, nothing written to the central cluster.
    assert props["frdf.exactly.once.source.support"] == "enabled"
    assert props["usdf.consumer.isolation.level"] == "read_committed"
    assert props["dedicated.mode.enable.internal.rest"] == "true"
    assert props["emit.heartbeats.enabled"] == props["emit.checkpoints.enabled"] == "false"
    assert props["usdf->frdf.offset-syncs.topic.location"] == "target"
    assert props["usdf->frdf.sync.topic.acls.enabled"] == "false"
    assert "retention\\.ms" in props["usdf->frdf.config.properties.exclude"]
    assert props["frdf.producer.compression.type"] == "lz4"
    # What cannot be translated is said, not dropped silently.
    assert "socket.keepalive.enable" in render_mm2_properties(settings)


def test_properties_escape_regex_backslashes(files: dict[str, Path]) -> None:
    """Java's Properties.load eats single backslashes; the regex must reach MirrorMaker 2 intact."""
    settings = _settings(files, selection={"patterns": [r"IN2P3_.*\.dp2"], "topics": ["a.b"]})
    text = render_mm2_properties(settings)
    assert r"usdf->frdf.topics = a\\.b, IN2P3_.*\\.dp2" in text
    assert parse_properties(text)["usdf->frdf.topics"] == r"a\.b, IN2P3_.*\.dp2"


def test_properties_prefix_sasl(files: dict[str, Path]) -> None:
    inline = _settings(
        files,
        policy="prefix",
        source={
            "bootstrap_servers": "usdf:9095",
            "security": {"protocol": "SASL_SSL", "username": "ukdf", "password": "not-in-the-file"},
        },
        target={
            "bootstrap_servers": "local:9093",
            "security": {
                "protocol": "SASL_SSL",
                "username": "local",
                "password_file": files["password"],
                "verify_hostname": False,
            },
        },
    )
    text = render_mm2_properties(inline)
    assert "not-in-the-file" not in text
    props = parse_properties(text)
    assert props["usdf->frdf.replication.policy.class"].endswith(".DefaultReplicationPolicy")
    assert props["usdf->frdf.replication.policy.separator"] == "."
    assert props["usdf.sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'username="ukdf" password="${env:MM2_USDF_SASL_PASSWORD}"' in props["usdf.sasl.jaas.config"]
    assert "MM2_USDF_SASL_PASSWORD" in text.split("# source cluster")[0]  # announced at the top
    assert f'password="${{directory:{files["password"].parent}:password}}"' in props["frdf.sasl.jaas.config"]
    assert props["frdf.ssl.endpoint.identification.algorithm"] == ""


def test_strimzi_resource(files: dict[str, Path]) -> None:
    settings = _settings(
        files,
        target={
            "bootstrap_servers": "frdf-kafka-bootstrap:9093",
            "security": {"protocol": "SASL_SSL", "username": "mirror", "password": "inline-secret"},
        },
    )
    options = Mm2Options(
        namespace="ingestd",
        replicas=2,
        target_secrets=StrimziSecrets(ca_secret="frdf-cluster-ca-cert", user_secret="mirror-user"),
    )
    resource = yaml.safe_load(render_strimzi_mirrormaker2(settings, options))
    assert resource["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert resource["kind"] == "KafkaMirrorMaker2"
    assert resource["metadata"]["name"] == "ingestd-mirror-usdf-to-frdf"
    assert resource["metadata"]["namespace"] == "ingestd"
    spec = resource["spec"]
    assert spec["replicas"] == 2
    assert spec["connectCluster"] == "frdf"  # Connect runs next to the target, as Strimzi requires
    source, target = spec["clusters"]
    assert source["alias"] == "usdf"
    assert source["authentication"] == {
        "type": "tls",
        "certificateAndKey": {"secretName": "ingestd-mirror", "certificate": "user.crt", "key": "user.key"},
    }
    assert source["tls"]["trustedCertificates"] == [
        {"secretName": "usdf-cluster-ca-cert", "certificate": "ca.crt"}
    ]
    assert target["authentication"] == {
        "type": "scram-sha-512",
        "username": "mirror",
        "passwordSecret": {"secretName": "mirror-user", "password": "password"},
    }
    assert target["config"]["exactly.once.source.support"] == "enabled"
    (mirror,) = spec["mirrors"]
    assert (mirror["sourceCluster"], mirror["targetCluster"]) == ("usdf", "frdf")
    config = mirror["sourceConnector"]["config"]
    assert config["exactly.once.support"] == "required"
    assert config["consumer.isolation.level"] == "read_committed"
    assert config["replication.policy.class"].endswith(".IdentityReplicationPolicy")
    pattern = re.compile(mirror["topicsPattern"])
    assert pattern.fullmatch("special-topic")
    assert pattern.fullmatch("IN2P3_BUTLER_DISK-dp2_prep")
    assert not pattern.fullmatch("RAL_BUTLER_DISK-dp2_prep")
    assert mirror["topicsExcludePattern"] == "|".join(settings.selection.exclude)
    assert "inline-secret" not in json.dumps(resource)


def test_commas_in_a_pattern_are_refused(files: dict[str, Path]) -> None:
    settings = _settings(files, selection={"patterns": ["IN2P3_.{1,3}"]})
    with pytest.raises(Mm2RenderError, match="comma"):
        render_mm2_properties(settings)
    with pytest.raises(Mm2RenderError, match="comma"):
        render_strimzi_mirrormaker2(settings)


def _load_example(site: str, tmp_path: Path) -> MirrorSettings:
    """Load an example, its /etc/ingestd/ files replaced by empty files under ``tmp_path``."""
    text = (EXAMPLES / site / "mirror.yaml").read_text()
    for path in sorted(set(re.findall(re.escape(EXAMPLE_PREFIX) + r"[\w./-]+", text))):
        local = tmp_path / path.removeprefix(EXAMPLE_PREFIX)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("placeholder\n")
    config = tmp_path / "mirror.yaml"
    config.write_text(text.replace(EXAMPLE_PREFIX, f"{tmp_path}/"))
    return load_mirror_settings(config)


@pytest.mark.parametrize("site", ["frdf", "ukdf"])
def test_checked_in_examples_are_current(site: str, tmp_path: Path) -> None:
    """deploy/mm2/<site>/ holds what the renderer makes of <site>/mirror.yaml (regenerate with
    INGESTD_REGENERATE_MM2_EXAMPLES=1)."""
    settings = _load_example(site, tmp_path)
    for name, output in (
        ("mm2.properties", render_mm2_properties(settings)),
        ("kafkamirrormaker2.yaml", render_strimzi_mirrormaker2(settings)),
    ):
        rendered = output.replace(f"{tmp_path}/", EXAMPLE_PREFIX)
        path = EXAMPLES / site / name
        if REGENERATE:
            path.write_text(rendered)
        assert path.read_text() == rendered, f"{path} is stale: regenerate it (see the test's docstring)"


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", "mirror", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_check_render_and_refuse(tmp_path: Path) -> None:
    _load_example("ukdf", tmp_path)  # writes tmp_path/mirror.yaml and its files
    config = tmp_path / "mirror.yaml"

    checked = _cli("--config", str(config), "--check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    effective = json.loads(checked.stdout)
    assert effective["policy"] == "prefix"
    assert effective["source"]["security"]["username"] == "ukdf-mirror"

    out = tmp_path / "rendered"
    rendered = _cli("--config", str(config), "--render-mm2", str(out), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert sorted(p.name for p in out.iterdir()) == ["kafkamirrormaker2.yaml", "mm2.properties"]
    assert parse_properties((out / "mm2.properties").read_text())["clusters"] == "usdf, ukdf"

    # The environment overrides the file, and a bad value is named.
    refused = _cli("--config", str(config), "--check", cwd=tmp_path, env={"INGESTD_MIRROR_POLICY": "mirror"})
    assert refused.returncode == 2
    assert "policy" in refused.stderr

    secret = _cli("--check", cwd=tmp_path, env={
        "INGESTD_MIRROR_SOURCE__BOOTSTRAP_SERVERS": "c:9092",
        "INGESTD_MIRROR_SOURCE__SECURITY": json.dumps(
            {"protocol": "SASL_SSL", "username": "u", "password": "hunter2"}
        ),
        "INGESTD_MIRROR_TARGET__BOOTSTRAP_SERVERS": "l:9092",
        "INGESTD_MIRROR_SELECTION__TOPICS": '["a"]',
    })  # fmt: skip
    assert secret.returncode == 0, secret.stderr
    assert "hunter2" not in secret.stdout
