"""The mirror's transactional producer: every blocking call bounded by a deadline the mirror enforces.

confluent-kafka's transactional calls and their timeouts (seconds; ``None`` or
``-1`` waits forever, which the mirror never does):

==================================  ============================================================
``init_transactions(timeout)``      blocking; fences earlier producers of the transactional id
``begin_transaction()``             no timeout: a local state change, returns at once
``send_offsets_to_transaction(..    blocking; *may ignore its timeout* (librdkafka#5456)
, timeout)``
``commit_transaction(timeout)``     blocking; flushes, then ends the transaction
``abort_transaction(timeout)``      blocking; purges, then ends the transaction
==================================  ============================================================

Each blocking call runs on a :class:`~ingestd.kafka.DeadlineCaller` worker. A
retriable error is retried within the call's deadline (librdkafka documents
that a retriable ``commit_transaction`` or ``send_offsets_to_transaction``
failure may be retried with the same call); an abortable or fatal error is
raised at once; a deadline missed -- the call did not return, or kept failing
retriably -- raises :class:`~ingestd.kafka.CallStuckError`. The replicator then
aborts, or throws this producer away and builds another with the same
transactional id (whose ``init_transactions`` fences this one).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaException, Producer, TopicPartition

from ingestd.kafka import CallStuckError, DeadlineCaller, KafkaErrorKind, classify_kafka_error
from ingestd.log import get_logger

__all__ = ["CALL_GRACE_S", "TransactionalProducer"]

logger = get_logger(__name__)

T = TypeVar("T")

CALL_GRACE_S = 2.0
"""Time beyond the timeout given to librdkafka before a call that has not returned is declared stuck."""
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class TransactionalProducer:
    """One target producer (one epoch of the mirror's transactional id) and its call worker.

    Parameters
    ----------
    producer
        A producer built with the mirror's ``transactional.id``.
    call_timeout_s
        Deadline of each blocking transactional call, retries included.
    generation
        How many producers this process built before (names the worker thread).
    on_retry
        Called with the error of each retried attempt (for metrics).
    """

    def __init__(
        self,
        producer: Producer,
        call_timeout_s: float,
        generation: int,
        on_retry: Callable[[KafkaException], None] = lambda error: None,
    ) -> None:
        self._producer: Producer | None = producer
        self._timeout_s = call_timeout_s
        self._caller = DeadlineCaller(f"mirror-txn-{generation}")
        self._on_retry = on_retry
        self.initialised = False

    @property
    def producer(self) -> Producer:
        """The producer, for ``produce`` and ``poll`` on the mirror's own thread (never while a call runs)."""
        if self._producer is None:
            raise RuntimeError("this transactional producer was retired")
        return self._producer

    @property
    def stuck(self) -> bool:
        """Whether a call on this producer never returned (it must be retired)."""
        return self._caller.stuck is not None

    def init_transactions(self) -> None:
        """Fence earlier producers of the transactional id and end (commit or abort) their transaction."""
        producer = self.producer
        self._call("init_transactions", producer.init_transactions)
        self.initialised = True

    def begin_transaction(self) -> None:
        """Start a transaction (local: librdkafka takes no timeout and does not block here)."""
        self.producer.begin_transaction()

    def send_offsets_to_transaction(self, positions: list[TopicPartition], group_metadata: object) -> None:
        """Add the next source positions to the open transaction (the call librdkafka#5456 can hang in)."""
        producer = self.producer
        self._call(
            "send_offsets_to_transaction",
            lambda timeout: producer.send_offsets_to_transaction(positions, group_metadata, timeout),
        )

    def commit_transaction(self) -> None:
        """Flush and commit the open transaction."""
        self._call("commit_transaction", self.producer.commit_transaction)

    def abort_transaction(self) -> None:
        """Purge and abort the open transaction."""
        self._call("abort_transaction", self.producer.abort_transaction)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (bounded) and retire; a stuck producer is only retired."""
        if self._producer is not None and not self.stuck:
            producer = self._producer
            try:
                self._caller.call("flush", lambda: producer.flush(timeout_s), timeout_s + CALL_GRACE_S)
            except (KafkaException, CallStuckError) as error:
                logger.warning("mirror.producer_close_failed", error=str(error))
        self.retire()

    def retire(self) -> None:
        """Drop the producer; it is destroyed on the worker thread once any stuck call returns."""
        self._producer = None
        self._caller.retire()

    def _call(self, what: str, operation: Callable[[float], T]) -> T:
        """Run ``operation(timeout)`` on the worker, retrying retriable errors until the deadline."""
        deadline = time.monotonic() + self._timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallStuckError(f"{what} kept failing for {self._timeout_s:.0f} s")
            try:
                return self._caller.call(
                    what, functools.partial(operation, remaining), remaining + CALL_GRACE_S
                )
            except KafkaException as error:
                if classify_kafka_error(error) is not KafkaErrorKind.retriable:
                    raise
                self._on_retry(error)
                pause = min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], deadline - time.monotonic())
                logger.warning(
                    "mirror.transaction_call_retry", call=what, attempt=attempt + 1, error=str(error)
                )
                attempt += 1
                if pause > 0:
                    time.sleep(pause)
