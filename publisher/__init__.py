"""Rucio events to Kafka topics by destination facility (what HermesK did, without its losses).

Two modes share one set of rules (site-map routing, ``scope:name`` keys, DID
metadata enrichment, idempotent delivery with per-record reports):

* **table** — read Rucio's ``messages`` table in claimed batches (``FOR UPDATE SKIP
  LOCKED``, so several instances share it) and move a row to ``messages_history``
  only after Kafka confirmed its record, in the same transaction;
* **route** — consume one raw Hermes topic and fan it out, committing offsets only
  after the fan-out is confirmed.

Entry point: :func:`run_publisher` (``ingestd publish [--route]``).
"""

from ._delivery import DeliveryOutcome, KafkaDelivery
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    PermanentError,
    PublisherError,
    SourceUnavailableError,
    TransientError,
)
from ._loop import Backoff, BatchResult, RetryBook, run_loop
from ._messages import (
    HEADER_EVENT_TYPE,
    HEADER_MESSAGE_ID,
    HEADER_PUBLISHER,
    HEADER_UNROUTED,
    OutgoingRecord,
    RucioMessage,
    encode_envelope,
    parse_payload,
)
from ._metadata import DatabaseMetadata, Did, Enricher, EnrichmentResult, MetadataLookup, RestMetadata
from ._routing import UNROUTED_FACILITY, Route, Router, UnroutedReason, did_key
from ._service import PublisherMode, build_engine, run_publisher
from ._settings import (
    DatabaseSourceSettings,
    MetadataSettings,
    MetadataSourceKind,
    PublisherSettings,
    RouteSettings,
    TopicSettings,
    load_publisher_settings,
)
from ._source import Backlog, Claim, MessageTable
from ._table_publisher import TablePublisher
from ._tables import RucioTables, create_rucio_tables, rucio_tables
from ._topic_router import TopicRouter

__all__ = [
    "HEADER_EVENT_TYPE",
    "HEADER_MESSAGE_ID",
    "HEADER_PUBLISHER",
    "HEADER_UNROUTED",
    "UNROUTED_FACILITY",
    "Backlog",
    "Backoff",
    "BatchResult",
    "BrokerUnavailableError",
    "Claim",
    "ConfigurationError",
    "DatabaseMetadata",
    "DatabaseSourceSettings",
    "DeliveryOutcome",
    "Did",
    "Enricher",
    "EnrichmentResult",
    "KafkaDelivery",
    "MessageTable",
    "MetadataLookup",
    "MetadataSettings",
    "MetadataSourceKind",
    "OutgoingRecord",
    "PermanentError",
    "PublisherError",
    "PublisherMode",
    "PublisherSettings",
    "RestMetadata",
    "RetryBook",
    "Route",
    "RouteSettings",
    "Router",
    "RucioMessage",
    "RucioTables",
    "SourceUnavailableError",
    "TablePublisher",
    "TopicRouter",
    "TopicSettings",
    "TransientError",
    "UnroutedReason",
    "build_engine",
    "create_rucio_tables",
    "did_key",
    "encode_envelope",
    "load_publisher_settings",
    "parse_payload",
    "rucio_tables",
    "run_loop",
    "run_publisher",
]
