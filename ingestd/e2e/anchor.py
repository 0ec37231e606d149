"""The anchor: a consumer equivalent to ``lsst-dm/ctrl_ingestd``, what Rubin's facilities run today.

It exists to be measured against, in the same run and on the same servers, so it
keeps ctrl_ingestd's behaviour on purpose, weaknesses included (ANCHORS.md):

* ``confluent_kafka.Consumer`` with ``enable.auto.commit=True`` (offsets move in the
  background whether or not the ingest happened) and ``auto.offset.reset=earliest``;
* ``consume(num_messages=50, timeout)`` batches (ctrl_ingestd's ``num_messages``);
* the URL mapped with ``str.replace(rucio_prefix, fs_prefix)`` per topic;
* per batch, grouped by ``rubin_butler`` kind: ``Butler.ingest_zip`` per zip,
  ``Butler.ingest(*FileDataset(path, DatasetRef.from_json(sidecar)), transfer="direct")``
  for raws and data products (dataset types and runs registered when the Butler
  complains, then retried, as ctrl_ingestd does), ``Butler.import_`` per dimension
  file — on the real ``lsst-daf-butler``;
* a message that cannot be parsed, or an ingest that fails, is logged and dropped
  (ctrl_ingestd falls back to ``RawIngestTask`` for raws, which needs
  ``lsst.obs.base``; that fallback is not available here and is counted as a failure).

Two things are added for the benchmark harness only: ``--max-events`` ends the
process after that many messages (ctrl_ingestd runs forever), and ``--summary``
writes what was done and when as JSON.

Run: ``python -m ingestd.e2e.anchor CONFIG.yaml [--max-events N] [--summary FILE]``, where
CONFIG is a ctrl_ingestd configuration file (``brokers``, ``group_id``, ``client_id``,
``num_messages``, ``timeout``, ``butler_repo``, ``topics: {NAME: {rucio_prefix, fs_prefix}}``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["AnchorConfig", "AnchorSummary", "main", "run_anchor"]

LOGGER = logging.getLogger("ingestd.e2e.anchor")


@dataclass(frozen=True)
class AnchorConfig:
    """ctrl_ingestd's configuration keys."""

    brokers: str
    group_id: str
    client_id: str
    num_messages: int
    timeout: float
    butler_repo: str
    topics: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path) -> AnchorConfig:
        """Read a ctrl_ingestd YAML file."""
        data = yaml.safe_load(path.read_text())
        brokers = data["brokers"]
        return cls(
            brokers=",".join(brokers) if isinstance(brokers, list) else str(brokers),
            group_id=str(data["group_id"]),
            client_id=str(data.get("client_id", "ctrl_ingestd")),
            num_messages=int(data.get("num_messages", 50)),
            timeout=float(data.get("timeout", 1)),
            butler_repo=str(data["butler_repo"]),
            topics={str(name): dict(entry) for name, entry in (data.get("topics") or {}).items()},
        )


@dataclass
class AnchorSummary:
    """What the anchor did, for the benchmark."""

    messages: int = 0
    dropped_unparsable: int = 0
    ingested_events: Counter[str] = field(default_factory=Counter)
    failed_events: Counter[str] = field(default_factory=Counter)
    ingest_calls: int = 0
    batches: int = 0
    started_at: float = field(default_factory=time.time)
    first_message_at: float | None = None
    last_ingest_at: float | None = None
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        data = asdict(self)
        data["ingested_events"] = dict(self.ingested_events)
        data["failed_events"] = dict(self.failed_events)
        data["failures"] = self.failures[:20]
        return data


class _Butler:
    """ctrl_ingestd's ``RseButler`` ingest logic, on the real daf_butler."""

    def __init__(self, repo: str, summary: AnchorSummary) -> None:
        from lsst.daf.butler import Butler

        self.butler = Butler.from_config(repo, writeable=True)
        self.summary = summary

    def ingest(self, entries: list[tuple[str, dict[str, Any], str]]) -> None:
        by_kind: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for kind, payload, path in entries:
            by_kind.setdefault(kind, []).append((payload, path))
        for _payload, path in by_kind.get("zip_file", []):
            self._call("zip_file", 1, lambda path=path: self.butler.ingest_zip(path, transfer="direct"))
        for kind in ("raw_file", "data_product"):
            if kind in by_kind:
                self._ingest_files(kind, by_kind[kind])
        for _payload, path in by_kind.get("dim_file", []):
            self._call("dim_file", 1, lambda path=path: self.butler.import_(filename=path))

    def _call(self, kind: str, events: int, action: Any) -> bool:
        self.summary.ingest_calls += 1
        try:
            action()
        except Exception as error:  # ctrl_ingestd logs and drops; the harness counts
            LOGGER.info("%s ingest failed: %s", kind, error)
            self.summary.failed_events[kind] += events
            self.summary.failures.append(f"{kind}: {type(error).__name__}: {str(error)[:300]}")
            return False
        self.summary.ingested_events[kind] += events
        self.summary.last_ingest_at = time.time()
        return True

    def _ingest_files(self, kind: str, items: list[tuple[dict[str, Any], str]]) -> None:
        from lsst.daf.butler import DatasetRef, FileDataset
        from lsst.daf.butler import registry as legacy

        # The exceptions ctrl_ingestd catches (lsst.daf.butler.registry's, not in its __all__).
        dataset_type_error: type[Exception] = getattr(legacy, "DatasetTypeError")  # noqa: B009
        missing_collection_error: type[Exception] = getattr(legacy, "MissingCollectionError")  # noqa: B009

        datasets = []
        for payload, path in items:
            try:
                ref = DatasetRef.from_json(payload["rubin_sidecar"], universe=self.butler.dimensions)
            except Exception as error:  # as ctrl_ingestd: logged, dropped
                LOGGER.info("bad sidecar: %s", error)
                self.summary.failed_events[kind] += 1
                continue
            datasets.append(FileDataset(path, ref))
        attempts = len(datasets) + 2
        while datasets and attempts > 0:
            attempts -= 1
            self.summary.ingest_calls += 1
            try:
                self.butler.ingest(*datasets, transfer="direct")
            except dataset_type_error:
                for dataset_type in {ref.datasetType for d in datasets for ref in d.refs}:
                    self.butler.registry.registerDatasetType(dataset_type)
                continue
            except missing_collection_error:
                for run in {ref.run for d in datasets for ref in d.refs}:
                    self.butler.registry.registerRun(run)
                continue
            except Exception as error:
                LOGGER.info("ingest failed: %s", error)
                self.summary.failures.append(f"{kind}: {type(error).__name__}: {str(error)[:300]}")
                self.summary.failed_events[kind] += len(datasets)
                return
            self.summary.ingested_events[kind] += len(datasets)
            self.summary.last_ingest_at = time.time()
            return
        if datasets:
            self.summary.failed_events[kind] += len(datasets)


def run_anchor(
    config: AnchorConfig, *, max_events: int | None = None, summary_file: Path | None = None
) -> int:
    """Consume and ingest until ``max_events`` messages were handled (or SIGTERM); returns 0."""
    from confluent_kafka import Consumer

    summary = AnchorSummary()
    butler = _Butler(config.butler_repo, summary)
    consumer = Consumer(
        {
            "bootstrap.servers": config.brokers,
            "client.id": config.client_id,
            "group.id": config.group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    consumer.subscribe(list(config.topics))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))

    def write_summary() -> None:
        if summary_file is not None:
            summary_file.write_text(json.dumps(summary.as_dict(), indent=2))

    try:
        while not stopping and (max_events is None or summary.messages < max_events):
            wanted = config.num_messages
            if max_events is not None:
                wanted = min(wanted, max_events - summary.messages)
            messages = consumer.consume(num_messages=wanted, timeout=config.timeout)
            if not messages:
                continue
            summary.first_message_at = summary.first_message_at or time.time()
            entries: list[tuple[str, dict[str, Any], str]] = []
            for message in messages:
                summary.messages += 1
                try:
                    document = json.loads(message.value() or b"")
                    payload = document["payload"]
                    prefix = config.topics[str(message.topic())]
                    path = str(payload["dst-url"]).replace(prefix["rucio_prefix"], prefix["fs_prefix"])
                    entries.append((str(payload["rubin_butler"]), payload, path))
                except Exception as error:  # ctrl_ingestd: logged at INFO, dropped
                    LOGGER.info("unparsable message dropped: %s", error)
                    summary.dropped_unparsable += 1
            if entries:
                butler.ingest(entries)
            summary.batches += 1
            if summary.batches % 20 == 0:
                write_summary()
    finally:
        consumer.close()
        write_summary()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the anchor consumer."""
    parser = argparse.ArgumentParser(prog="python -m ingestd.e2e.anchor", description=__doc__)
    parser.add_argument("config", type=Path, help="ctrl_ingestd configuration file")
    parser.add_argument("--max-events", type=int, default=None, help="stop after this many messages")
    parser.add_argument("--summary", type=Path, default=None, help="write a JSON summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_anchor(AnchorConfig.load(args.config), max_events=args.max_events, summary_file=args.summary)


if __name__ == "__main__":
    sys.exit(main())
