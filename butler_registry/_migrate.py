"""Schema management: create, upgrade and check the registry schema with Alembic, programmatically.

No ``alembic.ini`` is needed: the configuration is built here and the migrations run on
a connection of the registry's own engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ._engine import WRITE_OPTIONS, translate_errors
from .interface import SchemaVersionError

__all__ = ["SchemaState", "check_schema", "head_revision", "schema_state", "upgrade"]


_MIGRATION_LOCK = 0x696E676573746400  # "ingestd\0": the advisory lock serialising migrations


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("butler_registry") / "migrations"))
    return config


def head_revision() -> str:
    """The newest schema revision this code ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "butler_registry ships at least one migration"
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands relative to this code's schema."""

    current: str | None
    """Revision the database is at (``None``: no registry schema at all)."""
    head: str
    """Revision this code expects."""
    known: bool
    """Whether this code knows ``current`` (a newer ingestd may have migrated further)."""

    @property
    def is_current(self) -> bool:
        """Whether the database is exactly at the schema this code uses."""
        return self.current == self.head


def schema_state(engine: sa.Engine) -> SchemaState:
    """Read the database's schema revision."""
    with translate_errors("reading the registry schema version"), engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(
        current=current, head=head_revision(), known=current is None or current in _known_revisions()
    )


def check_schema(engine: sa.Engine) -> SchemaState:
    """Refuse a database whose schema is not the one this code understands.

    Raises
    ------
    SchemaVersionError
        No schema (run ``ingestd registry init``), an older one (run ``ingestd
        registry upgrade``) or a newer one (upgrade ingestd).
    """
    state = schema_state(engine)
    if state.is_current:
        return state
    if state.current is None:
        raise SchemaVersionError(
            f"{engine.url.render_as_string(hide_password=True)} holds no registry; "
            "run `ingestd registry init`"
        )
    if not state.known:
        raise SchemaVersionError(
            f"registry schema revision {state.current} is newer than this ingestd knows (head {state.head}); "
            "upgrade ingestd"
        )
    raise SchemaVersionError(
        f"registry schema revision {state.current} is older than {state.head}; run `ingestd registry upgrade`"
    )


def upgrade(engine: sa.Engine, revision: str = "head") -> SchemaState:
    """Migrate the database to ``revision`` (create every table on an empty database).

    Raises
    ------
    SchemaVersionError
        The database is at a revision this code does not know.
    """
    before = schema_state(engine)
    if not before.known:
        raise SchemaVersionError(
            f"registry schema revision {before.current} is newer than this ingestd knows; upgrade ingestd"
        )
    config = _config()
    writer = engine.execution_options(**WRITE_OPTIONS)
    with translate_errors("migrating the registry schema"), writer.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two daemons starting at once on an empty database: one migrates, the other
            # waits here and then finds the schema current (SQLite: BEGIN IMMEDIATE does this).
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return schema_state(engine)
