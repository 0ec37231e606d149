"""The whole chain on the test bed, CI-sized: the benchmark's own code path, and a reconciliation that
really catches a lost dataset and a duplicated record."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from ingestd.bench.e2e import run_e2e
from ingestd.e2e import Campaign, Chain, Ledger, TestBed, Tuning, chunked, iter_events
from ingestd.kafka import make_producer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.opensearch, pytest.mark.prometheus]


@pytest.mark.butler
def test_bench_drain_mode_with_anchor(testbed: TestBed, tmp_path: Path) -> None:
    result = run_e2e(testbed, tmp_path, events=800, anchor_events=300, seed=3, timeout_s=600)
    reconciliation = result.reconciliation
    assert reconciliation["problems"] == []
    assert reconciliation["lost"] == 0
    assert reconciliation["duplicated"] == 0
    assert result.datasets > 0
    assert reconciliation["registry"]["seen"] == result.datasets
    assert result.events_per_s > 0
    assert result.elapsed_s > 0
    assert set(result.services) == {"publisher", "mirror", "daemon"}
    assert all(figures.peak_rss_mb > 10 for figures in result.services.values())
    assert result.exit_codes == {"daemon": 0, "mirror": 0, "publisher": 0}
    assert result.latency_opensearch is not None
    assert result.latency_opensearch["registered_documents"] > 0
    assert result.prometheus_registered_events == result.facility_events
    anchor = result.anchor
    assert anchor is not None
    assert anchor["messages"] == 300
    assert sum(anchor["ingested_events"].values()) > 0
    assert anchor["datasets_in_butler"] > 0
    assert result.ratio_events_per_s is not None


def test_bench_rate_mode_measures_latency_with_two_daemons(testbed: TestBed, tmp_path: Path) -> None:
    """Two daemon replicas in one group (the prod shape): both work, and nothing is lost or doubled."""
    result = run_e2e(
        testbed, tmp_path, events=400, rate=100.0, anchor_events=None, seed=4, timeout_s=600, daemons=2
    )
    assert result.mode == "rate"
    assert result.reconciliation["problems"] == []
    assert set(result.services) == {"publisher", "mirror", "daemon", "daemon-2"}
    assert result.exit_codes == {"daemon": 0, "daemon-2": 0, "mirror": 0, "publisher": 0}
    assert set(result.registered_by_daemon) == {"daemon", "daemon-2"}
    assert all(count > 0 for count in result.registered_by_daemon.values()), result.registered_by_daemon
    assert sum(result.registered_by_daemon.values()) == result.prometheus_registered_events
    assert result.reconciliation["registry"]["seen"] == result.datasets
    latency = result.latency_registry
    assert latency["datasets"] == result.datasets
    assert 0 < latency["p50_s"] <= latency["p99_s"] <= latency["max_s"]
    assert result.latency_opensearch is not None
    assert result.latency_opensearch["p99_s"] is not None


def test_reconciliation_catches_a_lost_dataset_and_a_duplicated_record(
    testbed: TestBed, tmp_path: Path
) -> None:
    with Chain(testbed, tmp_path, tuning=Tuning(opensearch=False)) as chain:
        campaign = Campaign(
            storage=chain.storage, events=300, seed=6, tag=chain.run_id, write_data_files=False
        )
        chain.prepare(campaign)
        chain.start()
        ledger = Ledger(tmp_path / "ledger.tsv", chain.site_map)
        feeder = chain.feeder()
        with ledger:
            for chunk in chunked(iter_events(campaign, ledger), 100):
                feeder.send(chunk)
        feeder.close()
        chain.wait_for_registry(
            datasets=ledger.datasets, dimension_files=ledger.dimension_files, timeout_s=300
        )
        chain.stop()
        clean = chain.reconcile(ledger)
        assert clean.problems == [], clean.problems

        with psycopg.connect(
            chain.registry_url.replace("postgresql+psycopg://", "postgresql://")
        ) as connection:
            connection.execute(
                "DELETE FROM dataset WHERE id = (SELECT dataset_id FROM dataset_file ORDER BY path LIMIT 1)"
            )
        row = next(r for r in ledger.rows() if r.facility == "FrDF")
        producer = make_producer(testbed.local)
        producer.produce(row.topic, value=b"{}", key=row.did.encode())
        assert producer.flush(30) == 0

        broken = chain.reconcile(ledger)
        assert broken.lost == 1
        assert broken.mirror_mismatched_keys == 1
        assert broken.local.duplicates == 1
        assert any("lost" in problem for problem in broken.problems)
        assert any("exactly-once" in problem for problem in broken.problems)


def test_cli_describes_the_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingestd", "bench", "e2e", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--events", "--rate", "--skip-anchor", "--anchor-events", "--daemons", "--json"):
        assert option in done.stdout


def test_the_report_counts_the_topics_already_on_the_test_bed(testbed: TestBed) -> None:
    """Leftover topics cost every service CPU: the benchmark reports (and warns about) how many there are."""
    from ingestd.bench.e2e import _kafka_load
    from ingestd.kafka import ensure_topics, make_admin

    name = f"e2e-load-{uuid.uuid4().hex[:8]}"
    admin = make_admin(testbed.local)  # kept referenced: its futures resolve only while it lives
    ensure_topics(admin, [name], partitions=3)
    load = _kafka_load(testbed)
    assert set(load) == {"central", "local"}
    assert load["local"]["topics"] >= 1
    assert load["local"]["partitions"] >= 3
    admin.delete_topics([name], operation_timeout=30)[name].result(30)
