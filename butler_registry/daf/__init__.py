"""The registry contract on top of the real ``lsst-daf-butler`` (optional extra ``[butler]``).

For sites that want ingest to go straight into their existing Butler repository.
Importing this package does not import daf_butler; opening a repository does.

* :class:`DafButlerRegistry` — the :class:`~butler_registry.interface.Registry` adapter.
* :class:`DafButlerSettings` — its settings (environment prefix ``INGESTD_DAF_BUTLER_``).
* :func:`create_butler_repo` — a new repository on SQLite or PostgreSQL (``butler create``).
"""

from ._registry import DafButlerRegistry
from ._repo import create_butler_repo, ensure_btree_gist
from ._settings import DafButlerSettings, TransferMode

__all__ = [
    "DafButlerRegistry",
    "DafButlerSettings",
    "TransferMode",
    "create_butler_repo",
    "ensure_btree_gist",
]
