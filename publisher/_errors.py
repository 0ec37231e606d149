"""The publisher's exceptions: what went wrong, and whether trying again can help.

::

    PublisherError
    ├── TransientError            back off, then retry the same rows / records
    │   ├── SourceUnavailableError    the Rucio database (or REST API) cannot be read or written now
    │   └── BrokerUnavailableError    Kafka cannot take records now (topic creation, metadata)
    └── PermanentError            retrying will not help: an operator must act
        └── ConfigurationError        settings or the Rucio schema do not allow the publisher to start

A record whose delivery Kafka refused is not an exception: it is a per-record
result (see :class:`publisher.DeliveryOutcome`), because the other records of the
batch may have been delivered and their rows must still move to history.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "PermanentError",
    "PublisherError",
    "SourceUnavailableError",
    "TransientError",
]


class PublisherError(Exception):
    """Base of every error the publisher raises on purpose."""


class TransientError(PublisherError):
    """Temporary: nothing was acknowledged; back off and retry the same work."""


class SourceUnavailableError(TransientError):
    """The Rucio database or REST API could not be read or written (connection lost, timeout)."""


class BrokerUnavailableError(TransientError):
    """Kafka could not take records now (brokers away, topic creation or metadata timed out)."""


class PermanentError(PublisherError):
    """Retrying cannot help; the service stops with a message that says what to fix."""


class ConfigurationError(PermanentError, ValueError):
    """Settings, or the tables found in the Rucio database, do not allow the publisher to run."""
