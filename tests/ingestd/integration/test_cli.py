"""The commands as an operator runs them: run (SIGTERM), check, replay, dlq; a ctrl_ingestd file as config."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from butler_registry import open_registry
from deploy.local import free_port
from ingestd.kafka import KafkaConnection

from .events import SAMPLES, dim_event, encode, sample, sample_bytes, synthetic_datasets
from .harness import IngestSetup
from .kafka_helpers import committed_offsets, create_topic, produce, read_all
from .processes import DaemonProcess, clean_environment, dataset_count, ingestd_command

CTRL_INGESTD_README = Path(__file__).resolve().parents[1] / "data" / "ctrl_ingestd_readme.yaml"


def ingestd(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ingestd_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_environment(),
        timeout=timeout_s,
        check=False,
    )


# -- run ------------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
def test_sigterm_finishes_the_batch_commits_and_exits_cleanly(ingest: IngestSetup) -> None:
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(4000, seed=ingest.topic))
    produce(ingest.kafka, ingest.topic, [d.event() for d in datasets])
    config = ingest.write_config(
        batching={"max_events": 500, "max_wait_s": 0.5}, lifecycle={"shutdown_timeout_s": 15}
    )
    daemon = DaemonProcess(config, ingest.workdir).start()
    try:
        daemon.port()
        deadline = time.monotonic() + 60
        while dataset_count(ingest.registry_url) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        asked = time.monotonic()
        code = daemon.terminate(timeout_s=30)
        took = time.monotonic() - asked
    finally:
        daemon.stop_quietly()
    assert code == 0, daemon.tail()
    assert took < 15, f"shutdown took {took:.1f} s"
    committed = sum(max(o, 0) for o in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values())
    # The batch in hand was finished and committed: what is registered is exactly what is committed.
    assert committed == dataset_count(ingest.registry_url) > 0
    assert '"daemon_stopped"' in daemon.log.read_text()


@pytest.mark.kafka
@pytest.mark.postgres
def test_ctrl_ingestd_readme_yaml_works_as_our_config(
    kafka_local: KafkaConnection, unique_name: Callable[[str], str], postgres_database: str, tmp_path: Path
) -> None:
    """ctrl_ingestd's README example, with only its host names, topic names and repository filled in."""
    open_registry(postgres_database, create=True).close()
    topic = create_topic(kafka_local, unique_name("XRD1-test"))
    other = create_topic(kafka_local, unique_name("XRD2-test"))
    group = unique_name("my_test_group")
    text = CTRL_INGESTD_README.read_text()
    text = text.replace("kafka:9092", kafka_local.bootstrap_servers[0])
    text = text.replace('"my_test_group"', f'"{group}"')
    text = text.replace("XRD1-test:", f"{topic}:").replace("XRD2-test:", f"{other}:")
    text = text.replace("butler_repo: /tmp/repo", f"butler_repo: {postgres_database}")
    config = tmp_path / "ctrl_ingestd.yaml"
    config.write_text(text)

    with open_registry(postgres_database) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    message = sample("message440.json")
    message["payload"]["dst-url"] = "root://xrd1:1094//rucio/test/visitSummary_330.fits"
    produce(kafka_local, topic, [encode(message)])

    checked = ingestd("check", "--config", str(config), "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = DaemonProcess(
        config, tmp_path, env={"INGESTD_HTTP_HOST": "127.0.0.1", "INGESTD_HTTP_PORT": "0"}
    ).start()
    try:
        daemon.port()
        deadline = time.monotonic() + 60
        while dataset_count(postgres_database) < 1 and time.monotonic() < deadline:
            daemon.assert_running()
            time.sleep(0.2)
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.stop_quietly()
    import psycopg

    with psycopg.connect(postgres_database.replace("postgresql+psycopg", "postgresql")) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM dataset_file")]
    # fs_prefix file:///rucio/disks/xrd1/rucio replaced the Rucio prefix, anchored.
    assert paths == ["/rucio/disks/xrd1/rucio/test/visitSummary_330.fits"]


# -- check ----------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
def test_check_passes_and_lists_partitions_and_lag(ingest: IngestSetup) -> None:
    produce(ingest.kafka, ingest.topic, [b"{}"] * 5, partition=1)
    result = ingestd("check", "--config", str(ingest.write_config()), cwd=ingest.workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{ingest.topic}[1] committed=None end=5 lag=5" in result.stdout
    assert "will be created at start" in result.stdout
    assert "all checks passed" in result.stdout


@pytest.mark.postgres
def test_check_wrong_broker_exits_non_zero_naming_it(ingest: IngestSetup) -> None:
    port = free_port()
    config = ingest.write_config(kafka={"bootstrap_servers": [f"127.0.0.1:{port}"]})
    result = ingestd("check", "--config", str(config), "--timeout", "3", cwd=ingest.workdir)
    assert result.returncode == 1
    assert f"FAIL  kafka: cannot reach Kafka at 127.0.0.1:{port}" in result.stdout
    assert "fix: check kafka.bootstrap_servers" in result.stdout
    assert "ok    registry" in result.stdout  # the other checks still ran


@pytest.mark.kafka
def test_check_wrong_registry_exits_non_zero_naming_it(ingest: IngestSetup) -> None:
    port = free_port()
    config = ingest.write_config(registry={"url": f"postgresql://ingest:secret@127.0.0.1:{port}/butler"})
    result = ingestd("check", "--config", str(config), "--json", cwd=ingest.workdir)
    assert result.returncode == 1
    body = json.loads(result.stdout)
    registry = next(check for check in body["checks"] if check["name"] == "registry")
    assert registry["status"] == "fail"
    assert f"127.0.0.1:{port}" in registry["detail"]
    assert "secret" not in result.stdout
    assert "registry.url" in registry["fix"]
    assert next(c for c in body["checks"] if c["name"] == "kafka")["status"] == "ok"


def test_check_invalid_settings_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("batching:\n  max_events: -3\n")
    result = ingestd("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "batching.max_events" in result.stderr
    assert str(config) in result.stderr


# -- replay ---------------------------------------------------------------------------------------


def test_replay_bundled_sample_with_no_servers(tmp_path: Path) -> None:
    """The README's first command: the embedded SQLite registry, a dead-letter file, no server."""
    first = ingestd("replay", "--sample", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    outcomes = summary["outcomes"]
    assert outcomes["registered"] >= 4
    assert outcomes["skipped"] == 1
    assert outcomes["rejected"] == 1
    assert (tmp_path / "ingestd-demo.sqlite3").exists()
    dead = [
        json.loads(line) for line in (tmp_path / "ingestd-demo-dead-letters.jsonl").read_text().splitlines()
    ]
    assert [d["headers"]["ingestd.error_class"] for d in dead] == ["invalid_json"]

    again = ingestd("replay", "--sample", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["outcomes"]["already_present"] == outcomes["registered"]
    listing = ingestd("dlq", "list", "--file", "ingestd-demo-dead-letters.jsonl", cwd=tmp_path)
    assert listing.returncode == 0
    assert "invalid_json" in listing.stdout


@pytest.mark.postgres
def test_replay_from_file_with_resume_marker(tmp_path: Path, postgres_database: str) -> None:
    open_registry(postgres_database, create=True).close()
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "prep.yaml").write_bytes((SAMPLES / "prep.yaml").read_bytes())
    events = tmp_path / "events.jsonl"
    lines = [dim_event(), *(d.event() for d in synthetic_datasets(250, seed="replay-file"))]
    events.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry:\n  url: {postgres_database}\n"
        f"site:\n  facilities:\n    - name: Test\n      rses: [XRD5]\n      prefixes:\n        XRD5:\n"
        f"          rucio_prefix: root://xrd5:1098//rucio/\n          fs_prefix: {storage}\n"
        f"dead_letters:\n  file: {tmp_path / 'dead.jsonl'}\nbatching:\n  max_events: 100\n"
    )
    marker = tmp_path / "marker.json"
    result = ingestd(
        "replay",
        "--from-file",
        str(events),
        "--config",
        str(config),
        "--resume-marker",
        str(marker),
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "registered       251" in result.stdout
    assert json.loads(marker.read_text())["line"] == 251
    resumed = ingestd(
        "replay",
        "--from-file",
        str(events),
        "--config",
        str(config),
        "--resume-marker",
        str(marker),
        "--json",
        cwd=tmp_path,
    )
    assert json.loads(resumed.stdout)["events"] == 0
    assert dataset_count(postgres_database) == 250


@pytest.mark.kafka
@pytest.mark.postgres
def test_replay_from_kafka_range_leaves_the_group_alone(ingest: IngestSetup) -> None:
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(90, seed=ingest.topic))
    produce(ingest.kafka, ingest.topic, [d.event() for d in datasets], partition=0)
    config = ingest.write_config()
    result = ingestd(
        "replay",
        "--from-kafka",
        "--config",
        str(config),
        "--topics",
        ingest.topic,
        "--start-offset",
        "30",
        "--end-offset",
        "60",
        "--json",
        cwd=ingest.workdir,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 30
    assert summary["outcomes"]["registered"] == 30
    assert dataset_count(ingest.registry_url) == 30
    assert committed_offsets(ingest.kafka, ingest.group, ingest.topic) == {0: -1001, 1: -1001, 2: -1001}
    everything = ingestd(
        "replay", "--from-kafka", "--config", str(config), "--since", "1h", "--json", cwd=ingest.workdir
    )
    summary = json.loads(everything.stdout)
    assert summary["outcomes"]["already_present"] == 30
    assert summary["outcomes"]["registered"] == 60


# -- dead letters ---------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
def test_dlq_list_and_redrive_after_a_fix(ingest: IngestSetup) -> None:
    """Events for a topic without a URL prefix are dead-lettered (no_prefix); after the fix they re-drive."""
    with open_registry(ingest.registry_url) as registry:
        registry.import_dimensions(SAMPLES / "prep.yaml")
    datasets = list(synthetic_datasets(20, seed=ingest.topic))
    produce(
        ingest.kafka, ingest.topic, [d.event() for d in datasets] + [sample_bytes("message440.json")[:50]]
    )
    broken = ingest.write_config("broken.yaml", topic_prefixes={})
    daemon = DaemonProcess(broken, ingest.workdir).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            daemon.assert_running()
            if (
                sum(max(o, 0) for o in committed_offsets(ingest.kafka, ingest.group, ingest.topic).values())
                == 21
            ):
                break
            time.sleep(0.2)
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    assert len(read_all(ingest.kafka, ingest.dead_letter_topic)) == 21

    fixed = ingest.write_config()
    listing = ingestd("dlq", "list", "--config", str(fixed), "--error-class", "no_prefix", cwd=ingest.workdir)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("no_prefix") == 20
    assert f"from {ingest.topic}[" in listing.stdout
    as_json = ingestd("dlq", "list", "--config", str(fixed), "--json", "--limit", "3", cwd=ingest.workdir)
    assert len(as_json.stdout.splitlines()) == 3

    # Re-drive the fixed class only: the other dead letter is passed over (skipped) by this group.
    only = ingestd(
        "dlq", "redrive", "--config", str(fixed), "--error-class", "no_prefix", "--json", cwd=ingest.workdir
    )
    assert only.returncode == 0, only.stderr
    summary = json.loads(only.stdout)
    assert summary["outcomes"]["registered"] == 20
    assert summary["outcomes"]["skipped"] == 1
    assert "dlq-redrive.no_prefix" in summary["what"]
    assert dataset_count(ingest.registry_url) == 20
    assert len(read_all(ingest.kafka, ingest.dead_letter_topic)) == 21

    # The unfiltered re-drive (its own group) sees all 21: 20 already there, the truncated one fails again.
    redrive = ingestd("dlq", "redrive", "--config", str(fixed), "--json", cwd=ingest.workdir)
    assert redrive.returncode == 0, redrive.stderr
    summary = json.loads(redrive.stdout)
    assert summary["outcomes"]["already_present"] == 20
    assert summary["outcomes"]["rejected"] == 1
    assert dataset_count(ingest.registry_url) == 20
    # The truncated one was dead-lettered again: one more attempt, original position kept.
    dead = read_all(ingest.kafka, ingest.dead_letter_topic)
    assert len(dead) == 22
    again = [headers for _, headers in dead if headers["ingestd.attempts"] == b"2"]
    assert len(again) == 1
    assert again[0]["ingestd.error_class"] == b"invalid_json"
    assert again[0]["ingestd.source.topic"].decode() == ingest.topic
    # The same group resumes where it stopped: only the dead letter written by the last re-drive is new.
    second = ingestd("dlq", "redrive", "--config", str(fixed), "--json", cwd=ingest.workdir)
    assert json.loads(second.stdout)["events"] == 1
    assert json.loads(second.stdout)["outcomes"]["rejected"] == 1
