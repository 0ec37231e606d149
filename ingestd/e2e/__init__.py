"""End-to-end runs of the whole chain on real servers: generated events, the services as processes,
reconciliation of every hop, and the anchor (what Rubin runs today) to compare with.

* :class:`Campaign` — realistic ``transfer-done`` events of all four kinds, several facilities,
  with the files they point to; streamed, so a million events cost no more memory than ten.
* :class:`Chain` — one run's databases, topics, configuration files and service processes
  (publisher, mirror, daemon); a context manager that cleans up after itself.
* :class:`RucioFeeder` — writes events into Rucio's ``messages`` table with Rucio's own code.
* :func:`reconcile` — Rucio rows vs Kafka records vs registry datasets vs dead letters, exactly.
* :mod:`ingestd.e2e.anchor` — the ctrl_ingestd-equivalent consumer on the real Butler.

``ingestd bench e2e`` (:mod:`ingestd.bench.e2e`) and the chaos tests are built on these.
"""

from ._campaign import (
    FACILITY_UNDER_TEST,
    RSES,
    Campaign,
    EventMix,
    GeneratedEvent,
    site_map_for,
    write_export,
)
from ._chain import SERVICES, Chain, ChainError, RegistryProgress, TestBed, Tuning, iter_events
from ._ledger import Ledger, LedgerRow
from ._processes import MemorySampler, ServiceError, ServiceProcess, free_port, read_usage
from ._reconcile import KafkaEvidence, ReconciliationError, ReconciliationReport, reconcile, scratch_database
from ._rucio import FeedError, FeedStats, RucioFeeder, chunked

__all__ = [
    "FACILITY_UNDER_TEST",
    "RSES",
    "SERVICES",
    "Campaign",
    "Chain",
    "ChainError",
    "EventMix",
    "FeedError",
    "FeedStats",
    "GeneratedEvent",
    "KafkaEvidence",
    "Ledger",
    "LedgerRow",
    "MemorySampler",
    "ReconciliationError",
    "ReconciliationReport",
    "RegistryProgress",
    "RucioFeeder",
    "ServiceError",
    "ServiceProcess",
    "TestBed",
    "Tuning",
    "chunked",
    "free_port",
    "iter_events",
    "read_usage",
    "reconcile",
    "scratch_database",
    "site_map_for",
    "write_export",
]
