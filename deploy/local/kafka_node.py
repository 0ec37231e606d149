"""Apache Kafka 3.9 in KRaft mode (broker and controller in one JVM), from Maven Central jars.

Two nodes make the test bed's two clusters: ``central`` stands for USDF and
``local`` for a Data Facility. Both have transactions enabled (single-replica
transaction log), so exactly-once mirroring and read_committed consumers work.
The same jars also hold MirrorMaker 2, the benchmark peer of ``mirror/``.
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from ._base import Layout, Server, ServerError, ensure_apt_packages, log, run_as_user, which

__all__ = ["KAFKA_VERSION", "KafkaNode", "install_kafka_jars"]

KAFKA_VERSION = "3.9.2"
POM = Path(__file__).parent / "kafka" / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.7.1"


def _java_ok() -> bool:
    return which("java") is not None


def _mvn_ok() -> bool:
    return which("mvn") is not None


def install_kafka_jars(layout: Layout) -> Path:
    """Resolve Kafka and MirrorMaker 2 jars into the cache; return the ``lib`` folder.

    Maven keeps its own repository cache, so a second resolution after a cleared
    test-bed cache is also quick.
    """
    lib = layout.cache / f"kafka-{KAFKA_VERSION}" / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    ensure_apt_packages(["default-jre-headless"], _java_ok)
    ensure_apt_packages(["maven"], _mvn_ok)
    log(f"resolving Kafka {KAFKA_VERSION} and MirrorMaker 2 jars from Maven Central (first run only)")
    lib.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(POM),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ],
        check=True,
    )
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise ServerError(f"Maven finished but no kafka_2.13 jar is in {lib}")
    marker.touch()
    return lib


def kafka_metadata_brokers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> int:
    """Send a Kafka Metadata v0 request and return how many brokers the cluster reports.

    A raw protocol probe (no client library needed): an open port is not enough,
    the node must have joined its KRaft quorum and registered as a broker.
    """
    client_id = b"testbed-probe"
    body = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = _recv_exact(sock, 4)
        (size,) = struct.unpack(">i", header)
        payload = _recv_exact(sock, size)
    (_correlation, broker_count) = struct.unpack(">ii", payload[:8])
    return int(broker_count)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return chunks


class KafkaNode(Server):
    """One single-node Kafka cluster.

    Parameters
    ----------
    layout
        Test-bed folders.
    cluster
        ``central`` or ``local`` (or another name for an extra cluster a test needs).
    port, controller_port
        Client and KRaft controller ports on 127.0.0.1.
    extra_properties
        Additional ``server.properties`` lines (e.g. an SSL listener for a TLS test).
    """

    group = "kafka"
    start_timeout_s = 120.0

    def __init__(  # noqa: PLR0917 - positional (layout, cluster, ports) reads naturally
        self,
        layout: Layout,
        cluster: str,
        port: int,
        controller_port: int,
        extra_properties: dict[str, str] | None = None,
        heap: str = "512m",
    ) -> None:
        self.name = f"kafka-{cluster}"
        self.cluster = cluster
        self.port = port
        self.controller_port = controller_port
        self.extra_properties = extra_properties or {}
        self.heap = heap
        super().__init__(layout)
        self.lib: Path | None = None

    def install(self) -> None:
        self.lib = install_kafka_jars(self.layout)
        self.user = run_as_user()

    def properties(self) -> dict[str, str]:
        """The node's ``server.properties``."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            # USDF's topics have 3 partitions; the test bed's auto-created ones match.
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "message.max.bytes": str(16 * 1024 * 1024),
            "replica.fetch.max.bytes": str(16 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        return props

    def configure(self) -> None:
        self.prepare_dir()
        config = self.dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in self.properties().items()))
        (self.dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
            "log4j.logger.kafka.request.logger=WARN\nlog4j.logger.state.change.logger=WARN\n"
        )
        if not (self.dir / "data" / "meta.properties").exists():
            log(f"{self.name}: formatting KRaft storage")
            cluster_id = _kraft_cluster_id()
            subprocess.run(
                [
                    "java",
                    "-cp",
                    f"{self._lib()}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--ignore-formatted",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                user=self.user,
            )

    def _lib(self) -> Path:
        if self.lib is None:
            self.lib = install_kafka_jars(self.layout)
        return self.lib

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        argv = [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp",
            f"{self._lib()}/*",
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]
        return argv, {}, self.dir

    def ready(self) -> bool:
        try:
            return kafka_metadata_brokers(self.port) >= 1
        except (OSError, struct.error):
            return False

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def endpoints(self) -> dict[str, str]:
        key = self.cluster.upper().replace("-", "_")
        return {
            f"INGESTD_TEST_KAFKA_{key}": f"127.0.0.1:{self.port}",
            "INGESTD_TESTBED_KAFKA_LIB": str(self._lib()),
        }


def _kraft_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool makes).

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the storage
    tool's argument parser takes such an id for an option and refuses to format, which
    failed one private broker in 64 of the test suite.
    """
    while True:
        text = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not text.startswith("-"):
            return text
