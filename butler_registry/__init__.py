"""butler_registry: a Postgres-backed Butler registry built for high-rate, idempotent ingest."""
