"""Creating a real Butler repository, as ``butler create`` does, on SQLite or PostgreSQL.

Used by the round-trip tests and the comparison benchmark, and by sites trying the
adapter on a scratch repository. A PostgreSQL registry needs the ``btree_gist``
extension (exclusion constraints on validity ranges); it is created here when
missing, which needs a role allowed to create extensions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from butler_registry.interface import RegistryConfigurationError

__all__ = ["create_butler_repo", "ensure_btree_gist"]


def ensure_btree_gist(database_url: str) -> None:
    """Create the ``btree_gist`` extension in the database at ``database_url`` if it is missing.

    Raises
    ------
    RegistryConfigurationError
        The extension cannot be created (contrib not installed, or no privilege).
    """
    import psycopg

    plain = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(plain, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    except psycopg.errors.InsufficientPrivilege as error:
        raise RegistryConfigurationError(
            f"the Butler registry needs the btree_gist extension; ask a superuser to run "
            f"'CREATE EXTENSION btree_gist' in that database ({error})"
        ) from error
    except psycopg.errors.UndefinedFile as error:
        raise RegistryConfigurationError(
            "the PostgreSQL server lacks the contrib extension btree_gist "
            f"(install postgresql-contrib): {error}"
        ) from error


def create_butler_repo(
    root: Path | str,
    *,
    registry_db: str | None = None,
    formatters: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> str:
    """Create a new Butler repository at ``root``; returns the path of its ``butler.yaml``.

    Parameters
    ----------
    root
        Directory of the repository (its file datastore lives below it).
    registry_db
        SQLAlchemy URL of the registry database (``postgresql://...``); SQLite
        inside ``root`` when ``None``.
    formatters
        Storage class name → formatter class name overrides written into the
        datastore configuration, for environments without the packages that
        provide the default formatters (``lsst.obs.base`` and friends).
    overwrite
        Replace an existing ``butler.yaml`` at ``root``.

    Raises
    ------
    RegistryConfigurationError
        daf_butler is not installed, or the database cannot host a registry.
    """
    try:
        from lsst.daf.butler import Butler, Config
    except ImportError as error:
        raise RegistryConfigurationError(
            "the real Butler is not installed: pip install 'df-ingestd[butler]' (lsst-daf-butler)"
        ) from error
    seed: dict[str, Any] = {}
    if registry_db is not None:
        if registry_db.startswith(("postgresql://", "postgresql+psycopg://")):
            ensure_btree_gist(registry_db)
        seed["registry"] = {"db": registry_db}
    if formatters:
        seed["datastore"] = {"formatters": dict(formatters)}
    config = Butler.makeRepo(str(root), config=Config(seed) if seed else None, overwrite=overwrite)
    location = config.configFile
    return str(location) if location is not None else str(Path(root) / "butler.yaml")
