"""Parked events: events waiting for the dimension records they need, and what each waits for.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``ingestd_pending`` and ``ingestd_pending_wait``."""
    op.create_table(
        "ingestd_pending",
        sa.Column(
            "key", sa.String(128), primary_key=True, comment="dataset:<uuid> or event:<sha256 of bytes>"
        ),
        sa.Column("value", sa.LargeBinary, nullable=False, comment="the raw event, unchanged"),
        sa.Column("message_key", sa.LargeBinary, comment="Kafka key of the event"),
        sa.Column("source", sa.String(16), nullable=False, comment="where the event was first read"),
        sa.Column("topic", sa.String(256)),
        sa.Column("partition", sa.Integer),
        sa.Column("offset", sa.BigInteger),
        sa.Column("line", sa.BigInteger),
        sa.Column("error_class", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("first_parked_at", _TIMESTAMP, nullable=False),
        sa.Column("last_parked_at", _TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TIMESTAMP, nullable=False),
        sa.Column("lease_until", _TIMESTAMP, comment="a daemon is re-driving the event until then"),
        comment="Events parked until the dimension records they need arrive (ingestd pending).",
    )
    op.create_index("ix_ingestd_pending_next_attempt_at", "ingestd_pending", ["next_attempt_at"])
    op.create_table(
        "ingestd_pending_wait",
        sa.Column(
            "pending_key",
            sa.String(128),
            sa.ForeignKey("ingestd_pending.key", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("element", sa.String(64), primary_key=True),
        sa.Column("data_key", sa.String(512), primary_key=True, comment="as in dimension_record"),
        comment="The dimension records each parked event waits for.",
    )
    op.create_index("ingestd_pending_wait_record", "ingestd_pending_wait", ["element", "data_key"])


def downgrade() -> None:
    """Drop the parked events (they are re-read from Kafka only if offsets are reset)."""
    op.drop_table("ingestd_pending_wait")
    op.drop_table("ingestd_pending")
