"""Fault injection for daemon processes under test (put this folder on PYTHONPATH).

``INGESTD_FAULT_KILL_AT_ACK=N`` makes the process SIGKILL itself when the Kafka
group source is asked to acknowledge (commit) for the N-th time: after the
registry transaction of that batch committed and its dead letters were
confirmed, before its offsets are committed. That is the narrowest window a crash
can hit, and the one that tests "registers nothing twice".
"""

from __future__ import annotations

import os
import signal

_AT = int(os.environ.get("INGESTD_FAULT_KILL_AT_ACK", "0") or 0)

if _AT > 0:
    from collections.abc import Sequence

    from ingestd.sources import RawRecord, _kafka_group

    _original = _kafka_group.KafkaGroupSource.acknowledge
    _calls = {"n": 0}

    def _acknowledge(self: _kafka_group.KafkaGroupSource, records: Sequence[RawRecord]) -> None:
        if records:
            _calls["n"] += 1
            if _calls["n"] >= _AT:
                os.kill(os.getpid(), signal.SIGKILL)
        return _original(self, records)

    setattr(_kafka_group.KafkaGroupSource, "acknowledge", _acknowledge)  # noqa: B010

if os.environ.get("INGESTD_FAULT_STACKS_ON_USR1"):
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)
