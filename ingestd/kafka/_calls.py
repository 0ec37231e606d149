"""Blocking client calls with a deadline the caller enforces, not the library.

librdkafka takes a timeout on most calls but does not always keep it:
``rd_kafka_send_offsets_to_transaction`` can wait forever for a group coordinator
that went away with a restarted broker (librdkafka#5456, #5511), and a synchronous
``commit`` waits for its reply without any bound (``rd_kafka_commit_queue``), which
after a broker restart may never come. A loop hung inside such a call keeps its
health endpoint answering while nothing moves. So the services never make those calls
on their own thread: a :class:`DeadlineCaller` runs each on a worker thread and gives
up waiting at the deadline. A call that has not returned by then leaves the worker
(and the client it holds) stuck; the caller retires that worker and builds a new
client -- the mirror a transactional producer (whose ``init_transactions`` fences the
old one), the daemon a group consumer (the uncommitted batch is read again and found
``already_present``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["CallStuckError", "DeadlineCaller"]

T = TypeVar("T")


class CallStuckError(TimeoutError):
    """A call did not return by its deadline; the worker that runs it is stuck and must be retired."""


@dataclass
class _Job(Generic[T]):
    run: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


_RETIRE = object()
"""Sentinel telling a worker to drop what it holds and end."""


class DeadlineCaller:
    """Run one call at a time on a daemon worker thread and wait for it at most until a deadline.

    Parameters
    ----------
    name
        Thread name (shows up in ``py-spy dump`` when a call is stuck).

    Notes
    -----
    Calls are serialised: the caller waits for each (so a client that is not
    thread-safe is still used by one thread at a time). After a
    :class:`CallStuckError` the caller is *stuck* for good and refuses further
    calls; :meth:`retire` lets its thread end once the stuck call returns, if
    ever. The thread is a daemon so a call that never returns cannot keep the
    process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stuck: str | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def stuck(self) -> str | None:
        """What the stuck call was, or None while every call returned."""
        return self._stuck

    def call(self, what: str, run: Callable[[], T], timeout_s: float) -> T:
        """Run ``run`` on the worker; return its result or raise what it raised.

        Raises
        ------
        CallStuckError
            ``run`` did not return within ``timeout_s`` (or an earlier call is still stuck).
        """
        if self._stuck is not None:
            raise CallStuckError(f"{what}: not attempted, {self._stuck} is still stuck")
        job: _Job[T] = _Job(run)
        self._jobs.put(job)
        if not job.done.wait(max(0.0, timeout_s)):
            self._stuck = what
            raise CallStuckError(f"{what} did not return within {timeout_s:.1f} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set when no error

    def retire(self) -> None:
        """Let the worker end after the call it runs (if any); what it holds is released on its thread."""
        self._jobs.put(_RETIRE)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _RETIRE or not isinstance(job, _Job):
                return
            try:
                job.result = job.run()
            except BaseException as error:
                job.error = error
            finally:
                job.done.set()
                del job
