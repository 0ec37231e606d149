"""Alembic migrations of the SQL registry, run programmatically (see :mod:`butler_registry._migrate`)."""
