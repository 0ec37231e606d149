"""Chaos: every service killed, PostgreSQL and the local Kafka restarted, OpenSearch cut — while events flow.

The whole chain runs as processes (publisher, mirror, daemon) on a test bed whose
breakable parts are private to this module (see ``conftest.py``). Events are
written into Rucio at a steady rate from a thread while faults are applied one
after the other, each only once registrations are seen progressing (so every
fault hits a chain in motion). Afterwards the run is reconciled hop by hop
(:func:`ingestd.e2e.reconcile`): Rucio rows, records on both clusters, registry
datasets and dimension files, dead letters. The guarantees under test:

* nothing lost: every generated event's datasets (and dimension records) end in the
  registry; every Rucio row was published; every facility record was mirrored;
* nothing duplicated where it must not be: each dataset registered once, the mirror
  copies exactly what the central cluster holds (the publisher may re-send after a
  kill — at-least-once by design — and those copies are counted, not failed);
* no dead letters from faults (transient failures are retried, never dead-lettered).

A supervisor stands in for systemd/Kubernetes and the on-call operator: it restarts a
service that exits on its own, kills and restarts one whose ``/healthz`` fails three probes
in a row (a hung process), and restarts the mirror when records wait and its committed
positions have not moved for a minute (the ``IngestdMirrorStalled`` alert's runbook, its
30 minutes compressed), and likewise the daemon when records wait on its topics and its
committed offsets stand still (``IngestdIngestStalled``). All are reported in the test
output. Outside restarts are tolerated only for the defects in ``KNOWN_STALLS`` (empty now: the
mirror's and the daemon's are fixed, see docs/RELIABILITY.md);
``INGESTD_TEST_CHAOS_STRICT=1`` tolerates none.

``test_every_fault_once`` is the CI-sized run (six faults in a seeded random order).
``test_repeated_random_faults`` (marked slow) runs several rounds with more events;
``INGESTD_TEST_CHAOS_ROUNDS``, ``INGESTD_TEST_CHAOS_RATE`` and ``INGESTD_TEST_SEED`` size it.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ingestd.e2e import Campaign, Chain, Ledger, Tuning
from ingestd.log import get_logger

from ._support import PacedFeed, Supervisor, daemon_progress, mirror_progress, wait_until
from .conftest import ChaosBed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.opensearch]

logger = get_logger(__name__)

FAULTS = (
    "kill_publisher",
    "kill_mirror",
    "kill_daemon",
    "restart_postgres",
    "restart_kafka_local",
    "opensearch_down",
)


KNOWN_STALLS: dict[str, str] = {
    # The mirror's entry (send_offsets_to_transaction blocking after a local broker restart,
    # librdkafka#5456) is gone: it now gives up stuck calls and rebuilds its producer itself.
    # So is the daemon's (a synchronous offset commit whose reply never came after a local
    # broker restart): its commits have a deadline and a wedged consumer is replaced.
}
"""Defects of other services that a restart cures and the suite tolerates for now (reported in the output)."""


@dataclass
class ChaosRun:
    """One chain under a sequence of faults."""

    bed: ChaosBed
    chain: Chain
    feed: PacedFeed
    supervisor: Supervisor
    rng: random.Random
    applied: list[dict[str, Any]] = field(default_factory=list)

    def registered(self) -> int:
        try:
            return self.chain.registry_progress().datasets
        except Exception:  # the registry's server may be restarting
            return -1

    def wait_for_flow(self, more: int = 30, timeout_s: float = 300.0) -> None:
        """Wait until ``more`` datasets were registered since now: the fault hits a moving chain."""
        start = max(self.registered(), 0)
        wait_until(lambda: self.registered() >= start + more, timeout_s, f"{more} more registrations")

    def apply(self, fault: str) -> None:
        began = time.monotonic()
        before = self.registered()
        getattr(self, f"_{fault}")()
        self.applied.append(
            {"fault": fault, "seconds": round(time.monotonic() - began, 1), "registered_before": before}
        )
        logger.info("chaos_fault_applied", fault=fault, seconds=self.applied[-1]["seconds"])

    def _kill(self, name: str) -> None:
        service = self.chain.services[name]
        with self.supervisor.hands_off(name):
            time.sleep(self.rng.uniform(0.0, 1.0))
            service.kill()
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.chain.restart(name)

    def _kill_publisher(self) -> None:
        self._kill("publisher")

    def _kill_mirror(self) -> None:
        self._kill("mirror")

    def _kill_daemon(self) -> None:
        self._kill("daemon")

    def _restart_postgres(self) -> None:
        # Rucio (the event source, not under test) pauses while its database is away.
        with self.feed.hold():
            self.bed.postgres.stop()
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.bed.postgres.start()
            self.bed.postgres.wait_ready()

    def _restart_kafka_local(self) -> None:
        self.bed.kafka.stop()
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.bed.kafka.start()
        self.bed.kafka.wait_ready()

    def _opensearch_down(self) -> None:
        self.bed.opensearch.down()
        time.sleep(self.rng.uniform(4.0, 8.0))
        self.bed.opensearch.up()


def run_chaos(bed: ChaosBed, workdir: Path, *, faults: list[str], rate: float, seed: int) -> dict[str, Any]:
    """Run the chain under ``faults`` (in order) while events flow; reconcile; return the report."""
    rng = random.Random(seed)
    tuning = Tuning(daemon_batch_events=500, publisher_batch_size=200, log_level="INFO")
    with Chain(bed.testbed, workdir, tuning=tuning) as chain:
        campaign = Campaign(storage=chain.storage, events=50_000, seed=seed, tag=chain.run_id,
                            write_data_files=False, detectors=40)  # fmt: skip
        chain.prepare(campaign)
        chain.start()
        ledger = Ledger(workdir / "ledger.tsv", chain.site_map)
        supervisor = Supervisor(
            chain,
            stall_checks={"mirror": lambda: mirror_progress(chain), "daemon": lambda: daemon_progress(chain)},
        )
        with ledger, supervisor:
            feed = PacedFeed(chain, campaign, ledger, rate=rate).start()
            run = ChaosRun(bed, chain, feed, supervisor, rng)
            try:
                for fault in faults:
                    run.wait_for_flow()
                    run.apply(fault)
                run.wait_for_flow()
            finally:
                feed.finish()
                feed.join(180)
            chain.wait_for_registry(
                datasets=ledger.datasets,
                dimension_files=ledger.dimension_files,
                timeout_s=300,
                check_alive=(),
            )
            # Let every service finish what it holds (the dead-letter producer, offsets) before stopping.
            time.sleep(2)
        codes = chain.stop()
        report = chain.reconcile(ledger)
        result = {
            "seed": seed,
            "events": ledger.events,
            "facility_events": ledger.facility_events,
            "faults": run.applied,
            "supervisor_restarts": dict(supervisor.unexpected_exits),
            "liveness_restarts": dict(supervisor.liveness_restarts),
            "stall_restarts": dict(supervisor.stall_restarts),
            "supervisor_exit_codes": supervisor.exit_codes,
            "final_exit_codes": codes,
            "kills": {name: service.kills for name, service in chain.services.items()},
            "opensearch": chain.opensearch_latency(),
            "reconciliation": report.as_dict(),
        }
        _publish(result, workdir)
        report.assert_exact()
        # Outside restarts (liveness, stall) are tolerated only for the known defects listed in
        # KNOWN_STALLS (see docs/RELIABILITY.md); INGESTD_TEST_CHAOS_STRICT=1 tolerates none.
        strict = os.environ.get("INGESTD_TEST_CHAOS_STRICT", "") not in ("", "0")
        tolerated = set() if strict else set(KNOWN_STALLS)
        outside = {*supervisor.liveness_restarts, *supervisor.stall_restarts}
        assert outside <= tolerated, (
            f"services needed an outside restart: liveness {dict(supervisor.liveness_restarts)}, "
            f"stall {dict(supervisor.stall_restarts)}"
        )
        assert all(code == 0 for code in codes.values()), (
            codes,
            {n: s.tail(20) for n, s in chain.services.items()},
        )
        return result


def _publish(result: dict[str, Any], workdir: Path) -> None:
    """Log the run's figures; also append them to $INGESTD_TEST_CHAOS_REPORT (JSON lines) when set."""
    text = json.dumps(result, default=str)
    logger.info("chaos_run_report", report=text)
    print(text)  # shown by pytest -s / on failure
    target = os.environ.get("INGESTD_TEST_CHAOS_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as stream:
            stream.write(text + "\n")
    (workdir / "chaos-report.json").write_text(text)


def _seed() -> int:
    return int(os.environ.get("INGESTD_TEST_SEED", str(int(time.time()))))


def test_every_fault_once(chaos_bed: ChaosBed, tmp_path: Path) -> None:
    """CI size: each of the six faults once, in a seeded random order, ~100 events/s flowing."""
    seed = _seed()
    faults = list(FAULTS)
    random.Random(seed).shuffle(faults)
    result = run_chaos(
        chaos_bed,
        tmp_path,
        faults=faults,
        rate=float(os.environ.get("INGESTD_TEST_CHAOS_RATE", "100")),
        seed=seed,
    )
    assert result["reconciliation"]["lost"] == 0
    assert result["reconciliation"]["duplicated"] == 0
    assert {item["fault"] for item in result["faults"]} == set(FAULTS)


@pytest.mark.slow
@pytest.mark.soak
def test_repeated_random_faults(chaos_bed: ChaosBed, tmp_path: Path) -> None:
    """Several rounds of random faults (repeats allowed) at a higher rate."""
    seed = _seed()
    rounds = int(os.environ.get("INGESTD_TEST_CHAOS_ROUNDS", "3"))
    rng = random.Random(seed)
    faults = [rng.choice(FAULTS) for _ in range(rounds * len(FAULTS))]
    result = run_chaos(
        chaos_bed,
        tmp_path,
        faults=faults,
        rate=float(os.environ.get("INGESTD_TEST_CHAOS_RATE", "300")),
        seed=seed,
    )
    assert result["reconciliation"]["lost"] == 0
    assert result["reconciliation"]["duplicated"] == 0


@pytest.mark.slow
@pytest.mark.soak
def test_local_cluster_restarted_repeatedly(chaos_bed: ChaosBed, tmp_path: Path) -> None:
    """Four restarts of the facility's broker in a row: the case that exposed the mirror's stall."""
    seed = int(os.environ.get("INGESTD_TEST_SEED", "5"))
    result = run_chaos(chaos_bed, tmp_path, faults=["restart_kafka_local"] * 4, rate=100.0, seed=seed)
    assert result["reconciliation"]["lost"] == 0
    assert result["reconciliation"]["duplicated"] == 0
