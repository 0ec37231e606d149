"""The few Rucio tables the publisher reads and writes, declared with SQLAlchemy Core.

They match Rucio's own models (``lib/rucio/db/sqla/models.py``: ``Message``,
``MessageHistory``, ``DidMeta``) column for column, so the publisher talks SQL to a
real Rucio database without importing Rucio's server code (whose pins clash with
ours). Only the columns the publisher touches are declared; Rucio owns the tables,
their indexes and their migrations. :func:`create_rucio_tables` exists for
benchmarks and demonstrations on an empty database, never for a Rucio instance.

Types follow Rucio's choices: ``id`` is Rucio's GUID (PostgreSQL ``uuid``, 32
hexadecimal characters elsewhere, which is what SQLAlchemy's ``Uuid`` does), and
``did_meta.meta`` is ``jsonb`` on PostgreSQL and JSON text elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["RucioTables", "create_rucio_tables", "rucio_tables"]

_GUID = sa.Uuid(as_uuid=True)
_META = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


@dataclass(frozen=True)
class RucioTables:
    """Rucio's ``messages``, ``messages_history`` and ``did_meta`` tables in one schema."""

    metadata: sa.MetaData
    messages: sa.Table
    messages_history: sa.Table
    did_meta: sa.Table


def rucio_tables(schema: str | None = None) -> RucioTables:
    """Declare the tables, in Rucio's ``[database] schema`` when one is configured.

    Parameters
    ----------
    schema
        The schema Rucio was installed in (``rucio`` at many sites); None for the
        connection's search path.
    """
    metadata = sa.MetaData(schema=schema)
    messages = sa.Table(
        "messages",
        metadata,
        sa.Column("id", _GUID, primary_key=True),
        sa.Column("event_type", sa.String(256), nullable=False),
        sa.Column("payload", sa.String(4000), nullable=False),
        sa.Column("payload_nolimit", sa.Text),
        sa.Column("services", sa.String(256)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Index("MESSAGES_SERVICES_IDX", "services", "event_type"),
    )
    # Rucio declares no primary key on the history (a "fake" one exists only in its ORM).
    messages_history = sa.Table(
        "messages_history",
        metadata,
        sa.Column("id", _GUID),
        sa.Column("event_type", sa.String(1024)),
        sa.Column("payload", sa.String(4000)),
        sa.Column("payload_nolimit", sa.Text),
        sa.Column("services", sa.String(2048)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    did_meta = sa.Table(
        "did_meta",
        metadata,
        sa.Column("scope", sa.String(25), primary_key=True),
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("meta", _META),
        sa.Column("did_type", sa.String(1)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    return RucioTables(metadata, messages, messages_history, did_meta)


def create_rucio_tables(engine: sa.Engine, tables: RucioTables) -> None:
    """Create the three tables where they do not exist (benchmarks and demonstrations only).

    A real Rucio database already has them, made by Rucio's own ``build_database``;
    the publisher never creates or alters tables there.
    """
    tables.metadata.create_all(engine)
