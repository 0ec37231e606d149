"""Set up one ingest test on the real servers: topics, storage folder, registry, settings, a daemon thread."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from butler_registry import open_registry
from ingestd.config import IngestdSettings, load_settings
from ingestd.engine import StopToken
from ingestd.kafka import KafkaConnection
from ingestd.work import EventReport, Outcome

from .events import RUCIO_PREFIX, SAMPLES
from .kafka_helpers import create_topic


@dataclass
class IngestSetup:
    """Names and places of one test: its topic, dead-letter topics, group, storage and registry."""

    kafka: KafkaConnection
    topic: str
    dead_letter_topic: str
    group: str
    storage: Path
    registry_url: str
    workdir: Path

    @property
    def retry_topic(self) -> str:
        return f"{self.dead_letter_topic}.retry"

    def config(self, **sections: Any) -> dict[str, Any]:
        """Settings as plain data (this daemon's shape), with ``sections`` merged over the defaults."""
        data: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.kafka.bootstrap_servers},
            "consumer": {"group_id": self.group, "topics": [self.topic], "session_timeout_s": 6},
            "topic_prefixes": {self.topic: {"rucio_prefix": RUCIO_PREFIX, "fs_prefix": str(self.storage)}},
            "registry": {"url": self.registry_url},
            "dead_letters": {"topic": self.dead_letter_topic, "park_delay_s": 1, "park_delay_max_s": 2},
            "batching": {"max_events": 500, "max_wait_s": 0.3},
            "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 2},
            "http": {"host": "127.0.0.1", "port": 0},
            "lifecycle": {"shutdown_timeout_s": 20},
            "logging": {"format": "json"},
        }
        for name, value in sections.items():
            if name != "topic_prefixes" and isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return data

    def write_config(self, name: str = "ingestd.yaml", **sections: Any) -> Path:
        """Write :meth:`config` as YAML and return its path."""
        path = self.workdir / name
        path.write_text(yaml.safe_dump(self.config(**sections), sort_keys=False))
        return path

    def settings(self, **sections: Any) -> IngestdSettings:
        """Validated settings (through a YAML file, as an operator would give them)."""
        return load_settings(self.write_config(**sections))


def make_setup(
    kafka: KafkaConnection, unique_name: Callable[[str], str], registry_url: str, workdir: Path
) -> IngestSetup:
    """Create the topic (3 partitions, big records allowed), the storage folder with prep.yaml, the schema."""
    topic = create_topic(kafka, unique_name("XRD5-test"), config={"max.message.bytes": "20000000"})
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / "prep.yaml", storage / "prep.yaml")
    open_registry(registry_url, create=True).close()
    return IngestSetup(
        kafka=kafka,
        topic=topic,
        dead_letter_topic=unique_name("dlq"),
        group=unique_name("group"),
        storage=storage,
        registry_url=registry_url,
        workdir=workdir,
    )


@dataclass
class DaemonThread:
    """``run_daemon`` in a thread, with the reports it produced."""

    settings: IngestdSettings
    observers: Sequence[Callable[[Sequence[EventReport]], None]] = ()
    stop: StopToken = field(default_factory=lambda: StopToken(20.0))
    reports: list[EventReport] = field(default_factory=list)
    exit_code: int | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _observe(self, reports: Sequence[EventReport]) -> None:
        with self._lock:
            self.reports.extend(reports)

    def start(self) -> DaemonThread:
        from ingestd.daemon import run_daemon

        def target() -> None:
            self.exit_code = run_daemon(
                self.settings, stop=self.stop, observers=[self._observe, *self.observers]
            )

        self._thread = threading.Thread(target=target, name="daemon-under-test", daemon=True)
        self._thread.start()
        return self

    def count(self, *outcomes: Outcome) -> int:
        with self._lock:
            return sum(1 for report in self.reports if not outcomes or report.outcome in outcomes)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"daemon exited ({self.exit_code}) while waiting for {what}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; reports: {self.summary()}")

    def summary(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for report in self.reports:
                counts[report.outcome.value] = counts.get(report.outcome.value, 0) + 1
            return counts

    def stop_and_join(self, timeout_s: float = 30.0) -> int | None:
        self.stop.request("test")
        if self._thread is not None:
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), "daemon thread did not stop in time"
        return self.exit_code
