"""The deadline on blocking client calls, and the settings that bound it (pure logic, no servers)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from ingestd.kafka import CallStuckError, DeadlineCaller
from mirror import MirrorSettings

CENTRAL = {"bootstrap_servers": "central:9092"}
LOCAL = {"bootstrap_servers": "local:9092"}


def test_a_call_returns_its_result_or_raises_its_error() -> None:
    caller = DeadlineCaller("test-calls")
    assert caller.call("add", lambda: 1 + 1, 5.0) == 2
    with pytest.raises(ZeroDivisionError):
        caller.call("divide", lambda: 1 / 0, 5.0)
    assert caller.stuck is None
    caller.retire()


def test_a_call_past_its_deadline_is_given_up_and_the_caller_refuses_more() -> None:
    caller = DeadlineCaller("test-calls")
    release = threading.Event()
    began = time.monotonic()
    with pytest.raises(CallStuckError, match="hang did not return"):
        caller.call("hang", release.wait, 0.3)
    assert time.monotonic() - began < 2.0
    assert caller.stuck == "hang"
    with pytest.raises(CallStuckError, match="hang is still stuck"):
        caller.call("next", lambda: None, 5.0)
    caller.retire()
    release.set()  # the stuck call returns; the retired worker ends


def test_the_worker_thread_ends_once_retired() -> None:
    caller = DeadlineCaller("test-calls-retire")
    caller.call("noop", lambda: None, 5.0)
    caller.retire()
    deadline = time.monotonic() + 5
    while any(t.name == "test-calls-retire" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the retired worker did not end"
        time.sleep(0.05)


def test_stall_limit_must_leave_room_for_a_producer_rebuild() -> None:
    base: dict[str, Any] = {
        "source": CENTRAL,
        "target": LOCAL,
        "source_alias": "usdf",
        "selection": {"topics": ["t"]},
    }
    MirrorSettings(**base, transaction_call_timeout_s=15, stall_limit_s=120)
    with pytest.raises(ValidationError, match="stall_limit_s"):
        MirrorSettings(**base, transaction_call_timeout_s=30, stall_limit_s=60)
