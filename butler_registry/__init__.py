"""butler_registry: a Postgres-backed Butler registry built for high-rate, idempotent ingest.

* :func:`open_registry` — open (or create) the SQL registry at a URL; the ingest engine
  and the benchmarks call exactly this.
* :class:`SqlRegistry` — the :class:`~butler_registry.interface.Registry` contract on
  PostgreSQL (psycopg 3) or SQLite, with Butler export/import and zip import.
* :class:`RegistrySettings` — its settings (environment prefix ``INGESTD_REGISTRY_``).
* :mod:`butler_registry.interface` — the contract; :mod:`butler_registry.daf` — the same
  contract on the real ``lsst-daf-butler``.
"""

from ._access import grant_readonly
from ._engine import create_registry_engine, normalise_url
from ._export import ExportSummary
from ._migrate import SchemaState, check_schema, head_revision, schema_state, upgrade
from ._schema import SCHEMA_VERSION
from ._settings import DEFAULT_REGISTRY_URL, RegistrySettings
from ._sql_registry import SqlRegistry, open_registry
from .interface import (
    DatasetRecord,
    DatasetTypeSpec,
    FileInfo,
    ImportKind,
    ImportRequest,
    ImportResult,
    ItemResult,
    ItemStatus,
    Provenance,
    RegisterResult,
    Registry,
    RegistryConfigurationError,
    RegistryError,
    RegistryStats,
    SchemaVersionError,
    TransientRegistryError,
)

__all__ = [
    "DEFAULT_REGISTRY_URL",
    "SCHEMA_VERSION",
    "DatasetRecord",
    "DatasetTypeSpec",
    "ExportSummary",
    "FileInfo",
    "ImportKind",
    "ImportRequest",
    "ImportResult",
    "ItemResult",
    "ItemStatus",
    "Provenance",
    "RegisterResult",
    "Registry",
    "RegistryConfigurationError",
    "RegistryError",
    "RegistrySettings",
    "RegistryStats",
    "SchemaState",
    "SchemaVersionError",
    "SqlRegistry",
    "TransientRegistryError",
    "check_schema",
    "create_registry_engine",
    "grant_readonly",
    "head_revision",
    "normalise_url",
    "open_registry",
    "schema_state",
    "upgrade",
]
