"""Database roles for the registry: a read-only role for consumers of the registry.

The role that ran ``ingestd registry init`` owns the tables and is the only one that
writes (the ingest daemon uses it). Anyone else reads through a role made by
:func:`grant_readonly`: it may connect, see the schema and ``SELECT``, and nothing else;
default privileges extend that to tables later migrations create.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from psycopg import sql

from ._engine import translate_errors
from .interface import RegistryConfigurationError

__all__ = ["grant_readonly"]

_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def grant_readonly(engine: sa.Engine, role: str, *, login: bool = False, password: str | None = None) -> bool:
    """Create (or update) ``role`` so that it can read the registry and write nothing.

    Parameters
    ----------
    engine
        Engine of the registry, connected as the owner of its tables.
    role
        Role name.
    login
        Whether the role may log in (implied by a password); otherwise ``NOLOGIN``, a
        group role to grant to login roles.
    password
        Password of a login role.

    Returns
    -------
    created
        Whether the role was created (``False``: it existed and was updated).

    Raises
    ------
    RegistryConfigurationError
        Not PostgreSQL, a malformed role name, or the connected role may not create roles.
    """
    if engine.dialect.name != "postgresql":
        raise RegistryConfigurationError(
            "read-only roles need PostgreSQL; SQLite has no roles (use file permissions)"
        )
    if not _ROLE_NAME.match(role):
        raise RegistryConfigurationError(f"role name {role!r} is not a plain identifier")
    login = login or password is not None
    identifier = sql.Identifier(role)
    with translate_errors(f"granting read-only access to {role}"), engine.begin() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        exists = raw.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
        options = sql.SQL("LOGIN") if login else sql.SQL("NOLOGIN")
        if exists:
            raw.execute(sql.SQL("ALTER ROLE {} {}").format(identifier, options))
        else:
            raw.execute(sql.SQL("CREATE ROLE {} {}").format(identifier, options))
        if password is not None:
            raw.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(identifier, sql.Literal(password)))
        database = raw.execute("SELECT current_database()").fetchone()
        schema = raw.execute("SELECT current_schema()").fetchone()
        assert database is not None
        assert schema is not None
        # Default privileges apply to tables created by a given role: the tables' owner,
        # who runs later migrations (`ingestd registry upgrade`); before `init`, ourselves.
        owner = raw.execute(
            "SELECT coalesce((SELECT tableowner FROM pg_tables"
            " WHERE schemaname = current_schema() AND tablename = 'dataset'), current_user)"
        ).fetchone()
        assert owner is not None
        owner_name = owner[0]
        database_id, schema_id = sql.Identifier(database[0]), sql.Identifier(schema[0])
        owner_id = sql.Identifier(owner_name)
        for statement in (
            "GRANT CONNECT ON DATABASE {database} TO {role}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
            "GRANT SELECT ON SEQUENCES TO {role}",
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {schema} "
            "FROM {role}",
            "REVOKE CREATE ON SCHEMA {schema} FROM {role}",
        ):
            raw.execute(
                sql.SQL(statement).format(
                    database=database_id, schema=schema_id, role=identifier, owner=owner_id
                )
            )
    return not exists
