"""The local test bed: the real servers the pipeline talks to, on one machine, without Docker.

``python -m deploy.local up`` installs (first run) and starts two Kafka 3.9 KRaft
clusters (``central`` for USDF, ``local`` for a Data Facility), PostgreSQL 15,
OpenSearch 2.x and Prometheus, all on 127.0.0.1 and non-default ports, each in its
own folder under one state folder, then writes their endpoints to an env file.
``down`` stops them, ``status`` reports them. :class:`TestBed` is the same thing as
a Python API, used by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._base import Layout, Server, ServerError, file_lock, free_port, log
from .kafka_node import KafkaNode, install_kafka_jars
from .opensearch import OpenSearchServer
from .postgres import PostgresServer
from .prometheus import PrometheusServer

__all__ = [
    "GROUPS",
    "Layout",
    "PostgresServer",
    "ServerError",
    "ServerStatus",
    "TestBed",
    "free_port",
    "install_kafka_jars",
    "private_kafka",
    "private_postgres",
]

GROUPS = ("kafka", "postgres", "opensearch", "prometheus")
"""What ``--only`` accepts."""


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"INGESTD_TESTBED_{name}_PORT", default))


@dataclass(frozen=True)
class ServerStatus:
    """One line of ``status``."""

    name: str
    running: bool
    ready: bool
    pid: int | None
    memory_bytes: int
    endpoints: dict[str, str]


class TestBed:
    """The set of test-bed servers, with idempotent ``up`` and a clean ``down``."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout or Layout.default()
        self.servers: list[Server] = [
            KafkaNode(
                self.layout,
                "central",
                _port("KAFKA_CENTRAL", 19092),
                _port("KAFKA_CENTRAL_CONTROLLER", 19093),
            ),
            KafkaNode(
                self.layout, "local", _port("KAFKA_LOCAL", 29092), _port("KAFKA_LOCAL_CONTROLLER", 29093)
            ),
            PostgresServer(self.layout, _port("POSTGRES", 15432)),
            OpenSearchServer(self.layout, _port("OPENSEARCH", 19200), _port("OPENSEARCH_TRANSPORT", 19300)),
            PrometheusServer(self.layout, _port("PROMETHEUS", 19090)),
        ]

    def select(self, only: Iterable[str] | None = None) -> list[Server]:
        """The servers of the given groups (all when ``only`` is empty)."""
        wanted = set(only or GROUPS)
        unknown = wanted - set(GROUPS)
        if unknown:
            raise ServerError(f"unknown server group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}")
        return [server for server in self.servers if server.group in wanted]

    def up(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """Install (first run) and start the selected servers; reuse those already running.

        Returns the endpoints of every running server (also written to the env file).
        """
        selected = self.select(only)
        with file_lock(self.layout.state / ".lock"):
            for server in selected:
                server.install()
            started: list[Server] = []
            for server in selected:
                if server.running():
                    continue
                server.configure()
                log(f"starting {server.name}")
                server.start()
                started.append(server)
            for server in selected:
                began = time.monotonic()
                server.wait_ready()
                if server in started:
                    log(f"{server.name} ready ({time.monotonic() - began:.1f} s)")
                else:
                    log(f"{server.name} already running (pid {server.pid()})")
            return self._write_env()

    def down(self, only: Iterable[str] | None = None) -> None:
        """Stop the selected servers (all by default); their data stays for the next ``up``."""
        with file_lock(self.layout.state / ".lock"):
            for server in self.select(only):
                if server.running():
                    log(f"stopping {server.name}")
                server.stop()
            self._write_env()

    def status(self) -> list[ServerStatus]:
        """Whether each server runs and answers, its pid, memory and endpoints."""
        report = []
        for server in self.servers:
            running = server.running()
            report.append(
                ServerStatus(
                    name=server.name,
                    running=running,
                    ready=running and server.ready(),
                    pid=server.pid(),
                    memory_bytes=server.memory_bytes(),
                    endpoints=server.endpoints() if running else {},
                )
            )
        return report

    def endpoints(self) -> dict[str, str]:
        """Endpoints of the servers that run now."""
        env: dict[str, str] = {}
        for server in self.servers:
            if server.running():
                env.update(server.endpoints())
        return env

    def _write_env(self) -> dict[str, str]:
        env = self.endpoints()
        self.layout.state.mkdir(parents=True, exist_ok=True)
        self.layout.env_file.write_text("".join(f"{key}={value}\n" for key, value in sorted(env.items())))
        return env


def _private_state(prefix: str) -> Path:
    """A fresh temporary folder the unprivileged server user can enter (pytest's tmp_path is not)."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/tmp")))
    state.chmod(0o755)
    return state


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL server of one caller alone, stopped and removed on exit.

    For tests that stop or restart the database (outages): the shared server must never be
    touched. Its folder is a fresh temporary one reachable by the unprivileged server user,
    on a free port.
    """
    state = _private_state("ingestd-private-pg-")
    server = PostgresServer(Layout(state=state, cache=Layout.default().cache), port=free_port())
    try:
        server.install()
        server.configure()
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def private_kafka(cluster: str = "private", *, heap: str = "384m") -> Iterator[KafkaNode]:
    """A started single-node Kafka cluster of one caller alone, stopped and removed on exit.

    For tests that stop, kill or restart a broker: the shared clusters must never be touched.
    """
    state = _private_state(f"ingestd-private-kafka-{cluster}-")
    node = KafkaNode(
        Layout(state=state, cache=Layout.default().cache), cluster, free_port(), free_port(), heap=heap
    )
    try:
        node.install()
        node.configure()
        node.start()
        node.wait_ready()
        yield node
    finally:
        node.stop()
        shutil.rmtree(state, ignore_errors=True)
