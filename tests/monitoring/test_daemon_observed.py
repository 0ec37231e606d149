"""A running `ingestd run` daemon, observed the way operators and campaign managers will.

The real Prometheus scrapes the daemon's /metrics and the real OpenSearch receives its
event documents while it consumes a known batch (the bundled real-format sample events)
from the local Kafka. The expected outcome counts are the engine's own tally of the same
batch (`ingestd replay --json` on a fresh registry), which does not go through the
monitoring code; Prometheus and OpenSearch must both agree with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from opensearchpy import OpenSearch

from ingestd.kafka import KafkaConnection, ensure_topics, make_admin, make_producer
from tests.conftest import PrometheusServer

SAMPLES = Path(str(files("ingestd") / "samples"))


def _settings(tmp_path: Path, name: str, **sections: Any) -> Path:
    """A settings file for the bundled sample's site (RSE XRD5 → the sample files), plus ``sections``."""
    settings: dict[str, Any] = {
        "site": {
            "facilities": [
                {
                    "name": "Demo",
                    "rses": ["XRD5"],
                    "prefixes": {
                        "XRD5": {
                            "rucio_prefix": "root://xrd5:1098//rucio/demo/",
                            "fs_prefix": f"{SAMPLES / 'files'}/",
                        }
                    },
                }
            ]
        },
        "planning": {"facility": "Demo", "event_types": ["transfer-done"]},
        "verification": {"enabled": True, "checksum": True, "not_visible_timeout_s": 0},
        "registry": {"url": f"sqlite:///{tmp_path / (name + '.sqlite3')}"},
        "dead_letters": {"file": str(tmp_path / f"{name}-dead-letters.jsonl")},
        "http": {"enabled": False},
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _engine_tally(tmp_path: Path, events: Path) -> dict[str, int]:
    """Outcome counts of the batch according to the engine itself (replay summary)."""
    completed = subprocess.run(
        [sys.executable, "-m", "ingestd", "replay", "--from-file", str(events), "--no-progress", "--json",
         "--config", str(_settings(tmp_path, "replay"))],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    return {outcome: count for outcome, count in summary["outcomes"].items() if count}


def _wait(what: str, probe: Callable[[], Any], accept: Callable[[Any], bool], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = probe()
        if accept(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: last value {value}")


@pytest.mark.kafka
@pytest.mark.prometheus
@pytest.mark.opensearch
def test_running_daemon_is_scraped_and_documented(  # noqa: PLR0917 - pytest passes fixtures by name
    tmp_path: Path,
    kafka_local: KafkaConnection,
    prometheus: PrometheusServer,
    opensearch_url: str,
    index_prefix: str,
    unique_name: Callable[[str], str],
) -> None:
    """Counts by outcome in Prometheus and in OpenSearch equal the engine's tally of the known batch."""
    events = SAMPLES / "transfer-done.jsonl"
    lines = [line for line in events.read_text().splitlines() if line.strip()]
    expected = _engine_tally(tmp_path, events)
    assert sum(expected.values()) == len(lines)

    topic = unique_name("XRD5-demo")
    assert ensure_topics(make_admin(kafka_local), [topic], partitions=1) == [topic]
    producer = make_producer(kafka_local)
    for line in lines:
        producer.produce(topic, value=line.encode())
    assert producer.flush(30) == 0

    config = _settings(
        tmp_path,
        "daemon",
        kafka={"bootstrap_servers": kafka_local.bootstrap_servers},
        consumer={"group_id": unique_name("ingestd"), "topics": [topic]},
        dead_letters={
            "topic": unique_name("dlq"),
            "park_delay_s": 3_600,  # parked events stay parked during the test: counts stay put
            "park_delay_max_s": 3_600,
        },
        batching={"max_wait_s": 0.2},
        http={"enabled": True, "host": "127.0.0.1", "port": 0},
        opensearch={
            "urls": [opensearch_url],
            "index_prefix": index_prefix,
            "number_of_replicas": 0,
            "flush_interval_s": 0.2,
        },
    )
    ready = tmp_path / "ready.json"
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "run", "--config", str(config), "--ready-file", str(ready)],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "INGESTD_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        _wait("ready file", lambda: ready.exists() and ready.read_text(), bool, timeout_s=60)
        port = json.loads(ready.read_text())["port"]
        instance = prometheus.scrape(port, job="ingestd-daemon")
        selector = f'instance="{instance}"'

        def by_outcome() -> dict[str, int]:
            result = prometheus.query(f"sum by (outcome) (ingestd_events_total{{{selector}}}) > 0")
            return {s["metric"]["outcome"]: int(float(s["value"][1])) for s in result}

        assert _wait("Prometheus counts by outcome", by_outcome, lambda got: got == expected) == expected
        dead = prometheus.query(f"sum(ingestd_dead_letters_total{{{selector}}})")
        dead_lettered = expected.get("conflict", 0) + expected.get("rejected", 0)
        assert (float(dead[0]["value"][1]) if dead else 0.0) == dead_lettered
        batches = prometheus.query(f"sum(ingestd_batch_size_count{{{selector}}})")
        assert float(batches[0]["value"][1]) >= 1
        up = prometheus.query(f"up{{{selector}}}")
        assert float(up[0]["value"][1]) == 1

        client = OpenSearch(hosts=[opensearch_url])

        def documents_by_outcome() -> dict[str, int]:
            if not client.indices.exists(index=f"{index_prefix}-*"):
                return {}
            client.indices.refresh(index=f"{index_prefix}-*")
            response = client.search(
                index=f"{index_prefix}-*",
                body={"size": 0, "aggs": {"outcome": {"terms": {"field": "outcome"}}}},
            )
            return {b["key"]: b["doc_count"] for b in response["aggregations"]["outcome"]["buckets"]}

        assert _wait("OpenSearch documents by outcome", documents_by_outcome, lambda got: got == expected)
        facility = client.search(
            index=f"{index_prefix}-*",
            body={"size": 0, "aggs": {"facility": {"terms": {"field": "facility"}}}},
        )["aggregations"]["facility"]["buckets"]
        in_prometheus = prometheus.query(f'sum(ingestd_events_total{{{selector}, facility="Demo"}})')
        demo_documents = {b["key"]: b["doc_count"] for b in facility}.get("Demo", 0)
        assert demo_documents == int(float(in_prometheus[0]["value"][1]))
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
