"""The ingest engine: one set of stages for every source (run, replay, dead-letter re-drive).

See :mod:`ingestd.engine._engine` for the stages and their order, and
:mod:`ingestd.engine._runner` for the loop that acknowledges sources only after
the registry committed and dead letters were confirmed.
"""

from ._backoff import Backoff
from ._control import Pausable, Retrier, StopToken
from ._engine import Admission, BatchResult, Decoded, Engine, Planner
from ._errors import BatchAbandonedError, EngineError, FatalEngineError
from ._observers import Observer, ObserverDispatcher
from ._parking import FILE_NOT_VISIBLE, ParkingPolicy, ParkingVerdict
from ._pending import PENDING_SOURCE, PendingQueue, event_key
from ._runner import Runner, RunStats
from ._verify import CheckVerdict, FileToCheck, FileVerifier, Verifier

__all__ = [
    "FILE_NOT_VISIBLE",
    "PENDING_SOURCE",
    "Admission",
    "Backoff",
    "BatchAbandonedError",
    "BatchResult",
    "CheckVerdict",
    "Decoded",
    "Engine",
    "EngineError",
    "FatalEngineError",
    "FileToCheck",
    "FileVerifier",
    "Observer",
    "ObserverDispatcher",
    "ParkingPolicy",
    "ParkingVerdict",
    "Pausable",
    "PendingQueue",
    "Planner",
    "Retrier",
    "RunStats",
    "Runner",
    "StopToken",
    "Verifier",
    "event_key",
]
