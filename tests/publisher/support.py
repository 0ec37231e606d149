"""Helpers of the publisher's tests: Rucio databases, events, unique topics, reading Kafka back, processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from deploy.local.rucio_env import RucioEnv
from ingestd.kafka import KafkaConnection, make_admin, make_consumer
from ingestd.sitemap import SiteMap

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RucioDatabase:
    """One test's Rucio database: its URL, the Rucio environment bound to it, and SQL helpers."""

    url: str
    rucio: RucioEnv
    engine: sa.Engine

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar_one()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text(sql), params))

    def message_ids(self) -> set[str]:
        return {row[0].hex for row in self.rows("SELECT id FROM messages")}

    def history_ids(self) -> list[str]:
        return [row[0].hex for row in self.rows("SELECT id FROM messages_history")]


# ---------------------------------------------------------------------------------------------
# Events


def transfer_done(
    name: str,
    *,
    dst_rse: str = "IN2P3_BUTLER_DISK",
    scope: str = "dp2_prep",
    with_rubin: bool = True,
    sidecar_size: int = 0,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A transfer-done payload in the real format (see the shared samples)."""
    sidecar = json.dumps(
        {
            "id": str(uuid.uuid4()),
            "datasetType": {
                "name": "visitSummary",
                "storageClass": "ExposureCatalog",
                "dimensions": ["visit"],
            },
            "dataId": {"dataId": {"instrument": "HSC", "visit": 318}},
            # Random characters: a sidecar that compression cannot shrink below its size.
            "run": "HSC/runs/RC2/w_2023_32/" + os.urandom(sidecar_size // 2).hex(),
        }
    )
    payload: dict[str, Any] = {
        "activity": "User Subscriptions",
        "request-id": uuid.uuid4().hex,
        "checksum-adler": "3210cb3f",
        "file-size": 1365120,
        "bytes": 1365120,
        "guid": "None",
        "protocol": "root",
        "scope": scope,
        "name": name,
        "dataset": "rubin_dataset",
        "datasetScope": scope,
        "src-type": "DISK",
        "src-rse": "SLAC_BUTLER_DISK",
        "dst-type": "DISK",
        "dst-rse": dst_rse,
        "dst-url": f"root://xrootd.example.org:1094//rucio/{scope}/{name}",
        "reason": "",
        "transfer-id": str(uuid.uuid4()),
        "transferred_at": "2025-03-19 20:58:46",
        "tool-id": "rucio-conveyor",
        "account": "root",
        "datatype": "None",
    }
    if with_rubin:
        payload["rubin_butler"] = "data_product"
        payload["rubin_sidecar"] = sidecar
    payload.update(fields or {})
    return payload


def events(payloads: Sequence[Mapping[str, Any]], event_type: str = "transfer-done") -> list[dict[str, Any]]:
    """``add_messages`` input."""
    return [{"event_type": event_type, "payload": dict(p)} for p in payloads]


# ---------------------------------------------------------------------------------------------
# Site map and topics


@dataclass
class TestTopics:
    """Topic names unique to one test, the site map that produces them, and clean-up."""

    __test__ = False

    prefix: str
    site_map: SiteMap
    connection: KafkaConnection

    @property
    def catch_all(self) -> str:
        return self.site_map.catch_all_topic

    def frdf(self, rse: str, scope: str) -> str:
        return f"{self.prefix}.{rse}-{scope}"

    def ukdf(self) -> str:
        return f"{self.prefix}.rucio.transfers.UKDF"

    def delete_all(self) -> None:
        admin = make_admin(self.connection)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)


def make_site_map(prefix: str) -> SiteMap:
    """FrDF keeps HermesK's per-RSE-and-scope topics; UKDF uses one topic for the facility."""
    return SiteMap.model_validate(
        {
            "topic_template": f"{prefix}.{{dst_rse}}-{{scope}}",
            "catch_all_topic": f"{prefix}.unrouted",
            "facilities": [
                {"name": "FrDF", "rses": ["IN2P3_.*"]},
                {
                    "name": "UKDF",
                    "rses": ["RAL_.*", "LANCS_BUTLER_DISK"],
                    "topic": f"{prefix}.rucio.transfers.{{facility}}",
                },
            ],
        }
    )


@dataclass(frozen=True)
class ReadRecord:
    """A record read back from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    def envelope(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.value)
        return decoded


def read_topics(
    connection: KafkaConnection,
    prefix: str,
    *,
    expected: int,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> list[ReadRecord]:
    """Read the records of the topics starting with ``prefix`` until ``expected`` arrived, then a bit more.

    Reading continues ``settle_s`` past ``expected`` so that unexpected extra records
    (duplicates, strays) are seen too.
    """
    consumer = make_consumer(connection, f"verify-{uuid.uuid4().hex}", read_committed=False)
    consumer.subscribe([f"^{re.escape(prefix)}.*"])
    records: list[ReadRecord] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is not None and time.monotonic() > settle_until:
                break
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                if message.error() is not None:
                    continue
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None
                assert partition is not None
                assert offset is not None
                records.append(
                    ReadRecord(
                        topic,
                        partition,
                        offset,
                        message.key(),
                        message.value() or b"",
                        _headers(message.headers()),
                    )
                )
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return records


# ---------------------------------------------------------------------------------------------
# The publisher as a process


def publisher_env(
    *,
    database_url: str,
    kafka: KafkaConnection,
    site_map: SiteMap,
    instance_id: str,
    services: str = "activemq",
    batch_size: int = 500,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of an ``ingestd publish`` process for a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_PUBLISHER_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "INGESTD_LOG_FORMAT": "json",
            "INGESTD_LOG_LEVEL": "INFO",
            "INGESTD_PUBLISHER_KAFKA__BOOTSTRAP_SERVERS": ",".join(kafka.bootstrap_servers),
            "INGESTD_PUBLISHER_DATABASE__URL": database_url,
            "INGESTD_PUBLISHER_DATABASE__SERVICES": services,
            "INGESTD_PUBLISHER_SITE_MAP": site_map.model_dump_json(),
            "INGESTD_PUBLISHER_BATCH_SIZE": str(batch_size),
            "INGESTD_PUBLISHER_POLL_INTERVAL_S": "0.2",
            "INGESTD_PUBLISHER_HTTP_PORT": "0",
            "INGESTD_PUBLISHER_HTTP_HOST": "127.0.0.1",
            "INGESTD_PUBLISHER_INSTANCE_ID": instance_id,
            "INGESTD_PUBLISHER_TOPICS__PARTITIONS": "3",
        }
    )
    env.update(extra or {})
    return env


def publisher_command(*args: str) -> list[str]:
    """``python -m ingestd publish ...`` with this interpreter."""
    return [sys.executable, "-m", "ingestd", "publish", *args]


def _headers(raw: Any) -> dict[str, bytes]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return {name: value if isinstance(value, bytes) else str(value).encode() for name, value in pairs}
