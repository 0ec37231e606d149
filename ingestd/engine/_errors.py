"""The engine's own exceptions.

Exception tree::

    EngineError
    ├── FatalEngineError   (the registry schema or configuration, Kafka credentials, an unwritable
    │                       dead-letter file: nothing more can be done; exit non-zero)
    └── BatchAbandonedError     (a stop was requested while a transient failure persisted past the
                            shutdown deadline; nothing of the batch was acknowledged)

Transient failures are not exceptions of the engine: they are retried where they
happen (see :class:`~ingestd.engine.Retrier`). Problems with an event are not
exceptions either: they are outcomes.
"""

from __future__ import annotations

__all__ = ["BatchAbandonedError", "EngineError", "FatalEngineError"]


class EngineError(Exception):
    """Base of the engine's exceptions."""


class FatalEngineError(EngineError, RuntimeError):
    """The engine cannot continue; the message says what to fix. Exit non-zero."""


class BatchAbandonedError(EngineError):
    """Stopped with a batch unfinished; it was not acknowledged and will be read again."""
