"""Kafka connection settings and client factory shared by the daemon, mirror and publisher."""

from ._calls import CallStuckError, DeadlineCaller
from ._clients import KafkaErrorKind, classify_kafka_error, make_admin, make_consumer, make_producer
from ._logging import client_logger
from ._settings import (
    KafkaConnection,
    KafkaSecurity,
    PlaintextSecurity,
    SaslSslSecurity,
    SslSecurity,
)
from ._topics import NewTopic, ensure_topics

__all__ = [
    "CallStuckError",
    "DeadlineCaller",
    "KafkaConnection",
    "KafkaErrorKind",
    "KafkaSecurity",
    "NewTopic",
    "PlaintextSecurity",
    "SaslSslSecurity",
    "SslSecurity",
    "classify_kafka_error",
    "client_logger",
    "ensure_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
]
