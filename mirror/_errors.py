"""The mirror's exceptions.

Transient Kafka trouble (a broker away, a leader moving, a rebalance) is never
raised out of the replicator: the batch is aborted, re-read and retried. What
does come out is either a configuration the operator must fix or a client
that cannot continue::

    MirrorError
    ├── MirrorConfigError (ValueError)     settings that cannot work; fix and restart
    │   └── Mm2RenderError                 settings MirrorMaker 2 cannot express
    └── MirrorFatalError (RuntimeError)    the clients cannot continue; exit non-zero
        └── MirrorFencedError              another process took over this instance's identity
"""

from __future__ import annotations

__all__ = [
    "MirrorConfigError",
    "MirrorError",
    "MirrorFatalError",
    "MirrorFencedError",
    "Mm2RenderError",
]


class MirrorError(Exception):
    """Base class of every error the mirror raises on purpose."""


class MirrorConfigError(MirrorError, ValueError):
    """The settings cannot work (e.g. source and target are the same cluster with identity naming)."""


class Mm2RenderError(MirrorConfigError):
    """The settings cannot be expressed as a MirrorMaker 2 configuration (e.g. a regex with a comma)."""


class MirrorFatalError(MirrorError, RuntimeError):
    """The Kafka clients cannot continue (authentication, authorisation, repeated aborts).

    The process exits non-zero so that its supervisor restarts it; nothing is
    lost, because positions only move inside committed transactions.
    """


class MirrorFencedError(MirrorFatalError):
    """The transactional producer was fenced: a newer process runs with the same instance name.

    Two instances must never share ``instance``; the older one stops here.
    """
