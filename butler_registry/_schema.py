"""Table definitions of the SQL registry (SQLAlchemy Core).

The layout follows daf_butler's registry where it matters for faithfulness (dataset
types, RUN/TAGGED/CHAINED collections, datasets keyed by UUID, one dataset per
(dataset type, data ID) in a run, file records per dataset and component) and departs
from it where speed needs it:

* Dimension records live in one keyed table (element, data key) with the record as a
  JSON object, instead of one table per element; a data ID's records are checked with
  one indexed lookup whatever the elements.
* A dataset stores its data ID once, as canonical JSON of the required values, with a
  16-byte BLAKE2b hash that carries the Butler's uniqueness rule in a fixed-width index.
* Ingest provenance (Kafka position, Rucio transfer, event time) sits in the dataset row,
  next to daf_butler's own ``ingest_date``: one registration, one row, one index less to
  maintain per dataset.

The migrations in :mod:`butler_registry.migrations` create exactly these tables; a test
compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "ATTRIBUTES",
    "COLLECTION",
    "COLLECTION_CHAIN",
    "DATASET",
    "DATASET_FILE",
    "DATASET_TAG",
    "DATASET_TYPE",
    "DIMENSION_RECORD",
    "IMPORT_LOG",
    "METADATA",
    "PENDING_EVENT",
    "PENDING_WAIT",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = "1"
"""Version of this layout; stored in ``registry_attributes`` and checked at start-up."""

METADATA = sa.MetaData()

JsonObject = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

ATTRIBUTES = sa.Table(
    "registry_attributes",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    comment="Schema version, dimension universe and other facts about this registry.",
)

DIMENSION_RECORD = sa.Table(
    "dimension_record",
    METADATA,
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("data_key", sa.String(512), primary_key=True, comment="JSON array of the required values"),
    sa.Column("record", JsonObject, nullable=False),
    sa.Column("inserted_at", Timestamp, nullable=False, server_default=sa.func.now()),
    comment="Dimension records of every element (instrument, visit, detector, ...).",
)

DATASET_TYPE = sa.Table(
    "dataset_type",
    METADATA,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("dimensions", sa.Text, nullable=False, comment="JSON array of required dimensions"),
    sa.Column("storage_class", sa.String(128), nullable=False),
    sa.Column("is_calibration", sa.Boolean, nullable=False, server_default=sa.false()),
)

COLLECTION = sa.Table(
    "collection",
    METADATA,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("type", sa.String(16), nullable=False, comment="RUN, TAGGED or CHAINED"),
    sa.Column("doc", sa.Text),
    sa.CheckConstraint("type IN ('RUN', 'TAGGED', 'CHAINED')", name="collection_type_known"),
)

COLLECTION_CHAIN = sa.Table(
    "collection_chain",
    METADATA,
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("child_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
)

DATASET = sa.Table(
    "dataset",
    METADATA,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
    sa.Column("data_id", sa.Text, nullable=False, comment="canonical JSON of the required data ID"),
    sa.Column("data_id_hash", sa.LargeBinary(16), nullable=False, comment="BLAKE2b-128 of data_id"),
    sa.Column("ingest_date", Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("source", sa.String(16), comment="provenance: kafka, file, rucio or dlq"),
    sa.Column("kafka_topic", sa.String(256)),
    sa.Column("kafka_partition", sa.Integer),
    sa.Column("kafka_offset", sa.BigInteger),
    sa.Column("rucio_transfer_id", sa.String(64), comment="FTS transfer id"),
    sa.Column("rucio_rse", sa.String(128), comment="destination RSE"),
    sa.Column("rucio_scope", sa.String(128)),
    sa.Column("rucio_name", sa.Text, comment="Rucio DID name of the file"),
    sa.Column("event_time", Timestamp, comment="when Rucio finished the transfer"),
    sa.UniqueConstraint("run_id", "dataset_type_id", "data_id_hash", name="dataset_unique_data_id_in_run"),
)

DATASET_FILE = sa.Table(
    "dataset_file",
    METADATA,
    sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("component", sa.String(64), primary_key=True, server_default="", comment="'' for the whole"),
    sa.Column("path", sa.Text, nullable=False, comment="local path or URI; zip members as zip#zip-path=m"),
    sa.Column("file_size", sa.BigInteger),
    sa.Column("adler32", sa.String(8)),
    sa.Column("md5", sa.String(32)),
    sa.Column("formatter", sa.String(256)),
)

DATASET_TAG = sa.Table(
    "dataset_tag",
    METADATA,
    sa.Column(
        "collection_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
    comment="Membership of datasets in TAGGED collections.",
)

IMPORT_LOG = sa.Table(
    "import_log",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, comment="dim_file or zip_file"),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("records_inserted", sa.Integer, nullable=False),
    sa.Column("datasets_inserted", sa.Integer, nullable=False),
    sa.Column("source", sa.String(16)),
    sa.Column("topic", sa.String(256)),
    sa.Column("partition", sa.Integer),
    sa.Column("offset", sa.BigInteger),
    sa.Column("transfer_id", sa.String(64)),
    sa.Column("rse", sa.String(128)),
    sa.Column("event_time", Timestamp),
    sa.Column("imported_at", Timestamp, nullable=False, server_default=sa.func.now()),
    comment="One row per dim_file/zip_file import that wrote something: provenance of bulk imports.",
)

PENDING_EVENT = sa.Table(
    "ingestd_pending",
    METADATA,
    sa.Column("key", sa.String(128), primary_key=True, comment="dataset:<uuid> or event:<sha256 of bytes>"),
    sa.Column("value", sa.LargeBinary, nullable=False, comment="the raw event, unchanged"),
    sa.Column("message_key", sa.LargeBinary, comment="Kafka key of the event"),
    sa.Column("source", sa.String(16), nullable=False, comment="where the event was first read"),
    sa.Column("topic", sa.String(256)),
    sa.Column("partition", sa.Integer),
    sa.Column("offset", sa.BigInteger),
    sa.Column("line", sa.BigInteger),
    sa.Column("error_class", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("first_parked_at", Timestamp, nullable=False),
    sa.Column("last_parked_at", Timestamp, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", Timestamp, nullable=False, index=True),
    sa.Column("lease_until", Timestamp, comment="a daemon is re-driving the event until then"),
    comment="Events parked until the dimension records they need arrive (ingestd pending).",
)

PENDING_WAIT = sa.Table(
    "ingestd_pending_wait",
    METADATA,
    sa.Column(
        "pending_key",
        sa.String(128),
        sa.ForeignKey("ingestd_pending.key", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("data_key", sa.String(512), primary_key=True, comment="as in dimension_record"),
    sa.Index("ingestd_pending_wait_record", "element", "data_key"),
    comment="The dimension records each parked event waits for.",
)
