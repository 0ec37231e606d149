"""Alembic environment: migrations run on the connection the registry hands over.

Users never need an ``alembic.ini``: :func:`butler_registry._migrate.upgrade` builds the
configuration and passes an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from butler_registry._schema import METADATA


def run_migrations() -> None:
    """Run the migrations on the connection given by the caller."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("butler_registry migrations need an open connection in config.attributes")
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
