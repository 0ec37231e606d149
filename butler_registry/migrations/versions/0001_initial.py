"""Initial registry schema: dimension records, dataset types, collections, datasets with provenance, files.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of schema version 1."""
    attributes = op.create_table(
        "registry_attributes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        comment="Schema version, dimension universe and other facts about this registry.",
    )
    op.create_table(
        "dimension_record",
        sa.Column("element", sa.String(64), primary_key=True),
        sa.Column("data_key", sa.String(512), primary_key=True, comment="JSON array of the required values"),
        sa.Column("record", _JSON, nullable=False),
        sa.Column("inserted_at", _TIMESTAMP, nullable=False, server_default=sa.func.now()),
        comment="Dimension records of every element (instrument, visit, detector, ...).",
    )
    op.create_table(
        "dataset_type",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("dimensions", sa.Text, nullable=False, comment="JSON array of required dimensions"),
        sa.Column("storage_class", sa.String(128), nullable=False),
        sa.Column("is_calibration", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "collection",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("type", sa.String(16), nullable=False, comment="RUN, TAGGED or CHAINED"),
        sa.Column("doc", sa.Text),
        sa.CheckConstraint("type IN ('RUN', 'TAGGED', 'CHAINED')", name="collection_type_known"),
    )
    op.create_table(
        "collection_chain",
        sa.Column(
            "parent_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
    )
    op.create_table(
        "dataset",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
        sa.Column("data_id", sa.Text, nullable=False, comment="canonical JSON of the required data ID"),
        sa.Column("data_id_hash", sa.LargeBinary(16), nullable=False, comment="BLAKE2b-128 of data_id"),
        sa.Column("ingest_date", _TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("source", sa.String(16), comment="provenance: kafka, file, rucio or dlq"),
        sa.Column("kafka_topic", sa.String(256)),
        sa.Column("kafka_partition", sa.Integer),
        sa.Column("kafka_offset", sa.BigInteger),
        sa.Column("rucio_transfer_id", sa.String(64), comment="FTS transfer id"),
        sa.Column("rucio_rse", sa.String(128), comment="destination RSE"),
        sa.Column("rucio_scope", sa.String(128)),
        sa.Column("rucio_name", sa.Text, comment="Rucio DID name of the file"),
        sa.Column("event_time", _TIMESTAMP, comment="when Rucio finished the transfer"),
        sa.UniqueConstraint(
            "run_id", "dataset_type_id", "data_id_hash", name="dataset_unique_data_id_in_run"
        ),
    )
    op.create_table(
        "dataset_file",
        sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "component", sa.String(64), primary_key=True, server_default="", comment="'' for the whole"
        ),
        sa.Column(
            "path", sa.Text, nullable=False, comment="local path or URI; zip members as zip#zip-path=m"
        ),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("adler32", sa.String(8)),
        sa.Column("md5", sa.String(32)),
        sa.Column("formatter", sa.String(256)),
    )
    op.create_table(
        "dataset_tag",
        sa.Column(
            "collection_id",
            sa.Integer,
            sa.ForeignKey("collection.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
        comment="Membership of datasets in TAGGED collections.",
    )
    op.create_table(
        "import_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
        ),
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
        sa.Column("event_time", _TIMESTAMP),
        sa.Column("imported_at", _TIMESTAMP, nullable=False, server_default=sa.func.now()),
        comment="One row per dim_file/zip_file import that wrote something: provenance of bulk imports.",
    )
    op.bulk_insert(
        attributes,
        [
            {"name": "schema_version", "value": "1"},
            {"name": "universe_namespace", "value": "daf_butler"},
            {"name": "universe_version", "value": "8"},
        ],
    )


def downgrade() -> None:
    """Drop every table (the registry's contents are lost)."""
    for table in (
        "import_log",
        "dataset_tag",
        "dataset_file",
        "dataset",
        "collection_chain",
        "collection",
        "dataset_type",
        "dimension_record",
        "registry_attributes",
    ):
        op.drop_table(table)
