"""Fixtures that hand each test its real servers.

Each server group (kafka, postgres, opensearch, prometheus) is found, in order:

1. from environment variables (``INGESTD_TEST_KAFKA_CENTRAL``, ``INGESTD_TEST_KAFKA_LOCAL``,
   ``INGESTD_TEST_POSTGRES_URL``, ``INGESTD_TEST_OPENSEARCH_URL``, ``INGESTD_TEST_PROMETHEUS_URL``
   with ``INGESTD_TEST_PROMETHEUS_TARGETS_DIR``), e.g. exported by ``python -m deploy.local up``;
2. from testcontainers, where a Docker engine answers;
3. from the local test bed (``deploy.local``), started on demand.

A test that needs a server that cannot be had fails with the reason; nothing is
skipped silently. Servers are shared by the session; isolation is per test:
a fresh database, unique topic and index names.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ingestd.kafka import KafkaConnection

GROUP_VARIABLES = {
    "kafka": ("INGESTD_TEST_KAFKA_CENTRAL", "INGESTD_TEST_KAFKA_LOCAL"),
    "postgres": ("INGESTD_TEST_POSTGRES_URL",),
    "opensearch": ("INGESTD_TEST_OPENSEARCH_URL",),
    "prometheus": ("INGESTD_TEST_PROMETHEUS_URL", "INGESTD_TEST_PROMETHEUS_TARGETS_DIR"),
}


@dataclass
class ServerResolver:
    """Finds each server group once per session and remembers where it came from."""

    endpoints: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    _containers: list[Any] = field(default_factory=list)

    def get(self, group: str) -> dict[str, str]:
        """Endpoints of ``group``; fails the test with the reason when they cannot be had."""
        if group in self.failures:
            pytest.fail(f"{group} server unavailable: {self.failures[group]}", pytrace=False)
        if group not in self.sources:
            try:
                self._resolve(group)
            except Exception as error:  # any reason at all must reach the test report
                self.failures[group] = f"{type(error).__name__}: {error}"
                pytest.fail(f"{group} server unavailable: {self.failures[group]}", pytrace=False)
        return {key: self.endpoints[key] for key in GROUP_VARIABLES[group]}

    def _resolve(self, group: str) -> None:
        names = GROUP_VARIABLES[group]
        if all(os.environ.get(name) for name in names):
            self.endpoints.update({name: os.environ[name] for name in names})
            self.sources[group] = "environment"
            return
        if group != "prometheus" and _docker_answers():
            self.endpoints.update(self._start_container(group))
            self.sources[group] = "testcontainers"
            return
        from deploy.local import TestBed

        env = TestBed().up([group])
        missing = [name for name in names if name not in env]
        if missing:
            raise RuntimeError(f"local test bed started {group} but did not report {missing}")
        self.endpoints.update({name: env[name] for name in names})
        self.sources[group] = "local test bed (deploy.local)"

    def _start_container(self, group: str) -> dict[str, str]:
        """Start the group's servers with testcontainers (only where a Docker engine exists)."""
        if group == "kafka":
            from testcontainers.kafka import KafkaContainer

            urls = []
            for _ in ("central", "local"):
                container = KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft()
                container.start()
                self._containers.append(container)
                urls.append(container.get_bootstrap_server())
            return dict(zip(GROUP_VARIABLES["kafka"], urls, strict=True))
        if group == "postgres":
            from testcontainers.postgres import PostgresContainer

            pg = PostgresContainer("postgres:15", driver=None)
            pg.start()
            self._containers.append(pg)
            return {"INGESTD_TEST_POSTGRES_URL": pg.get_connection_url()}
        if group == "opensearch":
            from testcontainers.opensearch import OpenSearchContainer

            search = OpenSearchContainer("opensearchproject/opensearch:2.19.2", security_enabled=False)
            search.start()
            self._containers.append(search)
            config = search.get_config()
            return {"INGESTD_TEST_OPENSEARCH_URL": f"http://{config['host']}:{config['port']}"}
        raise RuntimeError(f"no container recipe for {group}")

    def close(self) -> None:
        for container in self._containers:
            container.stop()


def _docker_answers() -> bool:
    """Whether a Docker engine responds (the client alone is not enough)."""
    if os.environ.get("INGESTD_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return False
    return True


_RESOLVER = ServerResolver()


def pytest_report_header(config: pytest.Config) -> list[str]:
    preset = [group for group, names in GROUP_VARIABLES.items() if all(os.environ.get(n) for n in names)]
    return [f"ingestd servers from environment: {', '.join(preset) or 'none (resolved on demand)'}"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESOLVER.sources and not _RESOLVER.failures:
        return
    terminalreporter.section("ingestd test servers")
    for group, source in sorted(_RESOLVER.sources.items()):
        shown = ", ".join(f"{k}={v}" for k, v in _RESOLVER.endpoints.items() if k in GROUP_VARIABLES[group])
        terminalreporter.write_line(f"{group:11} real server via {source}: {shown}")
    for group, reason in sorted(_RESOLVER.failures.items()):
        terminalreporter.write_line(f"{group:11} UNAVAILABLE: {reason}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    _RESOLVER.close()


# ---------------------------------------------------------------------------------------------
# Kafka


@pytest.fixture(scope="session")
def kafka_central() -> KafkaConnection:
    """The central (USDF) Kafka cluster."""
    return KafkaConnection(bootstrap_servers=_RESOLVER.get("kafka")["INGESTD_TEST_KAFKA_CENTRAL"])


@pytest.fixture(scope="session")
def kafka_local() -> KafkaConnection:
    """The local (Data Facility) Kafka cluster."""
    return KafkaConnection(bootstrap_servers=_RESOLVER.get("kafka")["INGESTD_TEST_KAFKA_LOCAL"])


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make names (topics, groups, indices) unique to this test: ``unique_name("events")``."""
    base = request.node.name.lower().replace("[", "-").replace("]", "")
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base)[:60]

    def make(prefix: str = "t") -> str:
        return f"{prefix}.{base}.{uuid.uuid4().hex[:8]}"

    return make


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Superuser URL of the PostgreSQL server (``postgresql://...``, psycopg 3)."""
    return _RESOLVER.get("postgres")["INGESTD_TEST_POSTGRES_URL"]


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards. Yields its SQLAlchemy URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = admin_url.rpartition("/")
    yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_postgres() -> Iterator[Any]:
    """A PostgreSQL server of this test alone, which the test may stop (never the shared one)."""
    from deploy.local import private_postgres as start_private_postgres

    with start_private_postgres() as server:
        yield server


# ---------------------------------------------------------------------------------------------
# OpenSearch and Prometheus


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """Base URL of the OpenSearch server."""
    return _RESOLVER.get("opensearch")["INGESTD_TEST_OPENSEARCH_URL"]


@dataclass
class PrometheusServer:
    """The test Prometheus, and a way to make it scrape a port of this test."""

    url: str
    targets_dir: Path
    _registered: list[Path] = field(default_factory=list)

    def scrape(self, port: int, job: str = "testbed", **labels: str) -> str:
        """Ask Prometheus to scrape ``127.0.0.1:port``; returns the instance label to query by."""
        instance = f"127.0.0.1:{port}"
        target = self.targets_dir / f"{uuid.uuid4().hex}.json"
        target.write_text(json.dumps([{"targets": [instance], "labels": {"scrape_job": job, **labels}}]))
        self._registered.append(target)
        return instance

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; returns the ``result`` list."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def cleanup(self) -> None:
        for path in self._registered:
            path.unlink(missing_ok=True)


@pytest.fixture
def prometheus() -> Iterator[PrometheusServer]:
    """The Prometheus server; targets registered by the test are removed afterwards."""
    endpoints = _RESOLVER.get("prometheus")
    server = PrometheusServer(
        url=endpoints["INGESTD_TEST_PROMETHEUS_URL"],
        targets_dir=Path(endpoints["INGESTD_TEST_PROMETHEUS_TARGETS_DIR"]),
    )
    yield server
    server.cleanup()


# ---------------------------------------------------------------------------------------------
# Reference samples


SAMPLES_DIR = Path(__file__).parent / "data" / "samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Real-format HermesK messages and a Butler export (copied from the shared reference)."""
    return SAMPLES_DIR
