"""The mirror on secured links: mutual TLS and SASL_SSL/SCRAM, against a private Kafka node of this test.

The shared test bed runs plaintext; these tests start their own single-node
Kafka (the test bed's class, on free ports) with an SSL listener that requires
client certificates and a SASL_SSL listener with SCRAM-SHA-512, using a CA and
certificates made here with openssl. The node is stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from deploy.local._base import Layout
from deploy.local.kafka_node import KafkaNode, install_kafka_jars
from ingestd.kafka import KafkaConnection, make_admin, make_consumer
from mirror.mm2 import Mm2Options, render_mm2_properties

from ._support import assert_exactly_once, create_topic, produce, read_all, running_in_thread, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRAM_USER, SCRAM_PASSWORD = "mirror", "s3cret-for-tests"


@dataclass
class SecuredKafka:
    """A private Kafka node with plaintext (admin), mTLS and SASL_SSL listeners."""

    node: KafkaNode
    certs: Path
    plaintext: KafkaConnection
    ssl_port: int
    sasl_port: int

    def mtls(self, *, with_certificate: bool = True) -> KafkaConnection:
        security: dict[str, object] = {"protocol": "SSL", "ca_location": self.certs / "ca.crt"}
        if with_certificate:
            security |= {
                "certificate_location": self.certs / "client.crt",
                "key_location": self.certs / "client.key",
            }
        return KafkaConnection(
            bootstrap_servers=f"127.0.0.1:{self.ssl_port}",
            security=security,
            librdkafka={"socket.timeout.ms": 5000},
        )

    def scram(self, password: str = SCRAM_PASSWORD) -> KafkaConnection:
        (self.certs / "password").write_text(password + "\n")  # as a mounted Secret may end
        return KafkaConnection(
            bootstrap_servers=f"127.0.0.1:{self.sasl_port}",
            security={
                "protocol": "SASL_SSL",
                "username": SCRAM_USER,
                "password_file": self.certs / "password",
                "ca_location": self.certs / "ca.crt",
            },
        )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, all PEM (PKCS#8 keys)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=ingestd-test-ca", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extensions in (
        ("server", "/CN=127.0.0.1", ["-extfile", "san.ext"]),
        ("client", "/CN=ingestd-mirror", []),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", *extensions, cwd=folder)  # fmt: skip
    # Kafka's PEM keystore is the private key followed by the certificate chain, in one file.
    (folder / "server.pem").write_text(
        (folder / "server.key").read_text() + (folder / "server.crt").read_text()
    )
    for path in folder.iterdir():
        path.chmod(0o644)  # the broker runs as the test bed's unprivileged user


@pytest.fixture(scope="module")
def secured_kafka() -> Iterator[SecuredKafka]:
    # Under /tmp and world-traversable: the broker runs as the test bed's unprivileged user.
    state = Path(tempfile.mkdtemp(prefix="ingestd-mirror-tls-", dir="/tmp"))
    state.chmod(0o755)
    certs = state / "certs"
    certs.mkdir()
    certs.chmod(0o755)
    make_certificates(certs)
    port, controller, ssl_port, sasl_port = _free_ports(4)
    node = KafkaNode(
        Layout(state=state, cache=Layout.default().cache),
        "tls",
        port,
        controller,
        extra_properties={
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},"
            f"SSL://127.0.0.1:{ssl_port},SASL_SSL://127.0.0.1:{sasl_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port},"
            f"SASL_SSL://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs / "server.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs / "ca.crt"),
            "ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
        },
        heap="384m",
    )
    node.install()
    node.configure()
    node.start()
    try:
        node.wait_ready()
        plaintext = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
        admin = make_admin(plaintext)
        upsert = UserScramCredentialUpsertion(
            SCRAM_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), SCRAM_PASSWORD.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)
        yield SecuredKafka(node, certs, plaintext, ssl_port, sasl_port)
    finally:
        node.stop()
        shutil.rmtree(state, ignore_errors=True)


def _refused(connection: KafkaConnection) -> str:
    """Try to list topics; return the error text (the test fails if the cluster answers)."""
    consumer = make_consumer(connection, group_id=None)
    try:
        consumer.list_topics(timeout=8)
    except KafkaException as error:
        return str(error)
    finally:
        consumer.close()
    raise AssertionError(f"the broker answered a client that should be refused: {connection}")


def test_mtls_mirror_connects_with_its_certificate_and_others_are_refused(
    secured_kafka: SecuredKafka, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    """The listener requires client certificates: the mirror's is accepted, a client without one is not."""
    assert _refused(secured_kafka.mtls(with_certificate=False))
    topic = unique_name("tls")
    create_topic(secured_kafka.mtls(), topic, partitions=2)  # through the mTLS listener itself
    produce(secured_kafka.mtls(), topic, 200, partitions=2)
    alias = "tls" + unique_name("a").rsplit(".", 1)[1]
    settings = settings_for(secured_kafka.mtls(), kafka_local, alias=alias, selection={"topics": [topic]})
    with running_in_thread(settings):
        target = read_all(kafka_local, topic, expected=200)
    source = read_all(secured_kafka.mtls(), topic, expected=200)
    assert_exactly_once(source, target, source_alias=alias, target_topic=topic)


def test_sasl_scram_mirror_and_a_wrong_password_is_refused(
    secured_kafka: SecuredKafka, kafka_local: KafkaConnection, unique_name: Callable[[str], str]
) -> None:
    assert _refused(secured_kafka.scram(password="wrong"))
    topic = unique_name("scram")
    create_topic(secured_kafka.plaintext, topic, partitions=2)
    produce(secured_kafka.plaintext, topic, 100, partitions=2)
    alias = "scram" + unique_name("a").rsplit(".", 1)[1]
    settings = settings_for(secured_kafka.scram(), kafka_local, alias=alias, selection={"topics": [topic]})
    with running_in_thread(settings):
        target = read_all(kafka_local, topic, expected=100)
    assert_exactly_once(
        read_all(secured_kafka.plaintext, topic, expected=100), target, source_alias=alias, target_topic=topic
    )


def test_rendered_mm2_configuration_runs_the_real_mirrormaker2_over_mtls(
    secured_kafka: SecuredKafka,
    kafka_local: KafkaConnection,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """mm2.properties rendered from mTLS settings works as is with MirrorMaker 2 3.9 (PEM, providers)."""
    lib = os.environ.get("INGESTD_TESTBED_KAFKA_LIB") or str(install_kafka_jars(Layout.default()))
    topic = unique_name("mm2tls")
    create_topic(secured_kafka.plaintext, topic, partitions=2)
    produce(secured_kafka.plaintext, topic, 50, partitions=2)
    alias = "mm2tls" + unique_name("a").rsplit(".", 1)[1]
    settings = settings_for(
        secured_kafka.mtls(),
        kafka_local,
        alias=alias,
        target_alias=f"local{alias}",
        policy="prefix",
        selection={"topics": [topic]},
        target_replication_factor=1,
    )
    rest_port = _free_ports(1)[0]
    options = Mm2Options(internal_replication_factor=1, rest_listener=f"http://127.0.0.1:{rest_port}")
    (tmp_path / "mm2.properties").write_text(render_mm2_properties(settings, options))
    log = tmp_path / "mm2.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", f"{lib}/*", "org.apache.kafka.connect.mirror.MirrorMaker",
             str(tmp_path / "mm2.properties")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        target = read_all(kafka_local, f"{alias}.{topic}", expected=50, timeout_s=120)
    except AssertionError as error:
        raise AssertionError(f"{error}\nMirrorMaker 2 log tail:\n{log.read_text()[-4000:]}") from error
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(60)
        # MirrorMaker 2's own topics on the shared local cluster (the mirrored copy stays, like other tests').
        internal = [
            f"mm2-{kind}.{alias}.internal" for kind in ("offsets", "configs", "status", "offset-syncs")
        ]
        admin = make_admin(kafka_local)
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [name for name in internal if name in existing]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                future.result(timeout=30)
    source = read_all(secured_kafka.plaintext, topic, expected=50)
    assert sorted(r.value or b"" for r in target) == sorted(r.value or b"" for r in source)
