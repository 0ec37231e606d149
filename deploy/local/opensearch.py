"""OpenSearch 2.x from its Maven Central distribution zip (integ-test flavour).

No bundled JDK and no security plugin: the machine's Java 17 runs it, plain HTTP
on 127.0.0.1. Indexing, ``_bulk``, search, aggregations and index templates work,
which is what the monitoring sink uses. It refuses to run as root, so as root it
runs as the test bed's unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from ._base import (
    Layout,
    Server,
    ServerError,
    chown_tree,
    ensure_apt_packages,
    http_ok,
    log,
    run_as_user,
    which,
)

__all__ = ["OPENSEARCH_VERSION", "OpenSearchServer"]

OPENSEARCH_VERSION = "2.19.2"
ARTIFACT = f"org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}:zip"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.7.1"


def _java_home() -> str:
    java = which("java")
    if java is None:
        raise ServerError("java not found; install Debian's default-jre-headless")
    return str(Path(os.path.realpath(java)).parent.parent)


class OpenSearchServer(Server):
    """The test bed's OpenSearch node."""

    name = "opensearch"
    group = "opensearch"
    start_timeout_s = 180.0

    def __init__(self, layout: Layout, port: int, transport_port: int, heap: str = "512m") -> None:
        super().__init__(layout)
        self.port = port
        self.transport_port = transport_port
        self.heap = heap
        self.home = layout.cache / f"opensearch-{OPENSEARCH_VERSION}"

    def install(self) -> None:
        self.user = run_as_user()
        if (self.home / "bin" / "opensearch").exists():
            return
        ensure_apt_packages(["default-jre-headless"], lambda: which("java") is not None)
        ensure_apt_packages(["maven"], lambda: which("mvn") is not None)
        log(f"fetching OpenSearch {OPENSEARCH_VERSION} from Maven Central (first run only)")
        download = self.layout.cache / "downloads"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                f"{DEPENDENCY_PLUGIN}:copy",
                f"-Dartifact={ARTIFACT}",
                f"-DoutputDirectory={download}",
            ],
            check=True,
        )
        archive = download / f"opensearch-{OPENSEARCH_VERSION}.zip"
        staging = self.layout.cache / f".opensearch-{OPENSEARCH_VERSION}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        inner = staging / f"opensearch-{OPENSEARCH_VERSION}"
        for script in (inner / "bin").iterdir():
            script.chmod(0o755)
        inner.rename(self.home)
        shutil.rmtree(staging, ignore_errors=True)

    def configure(self) -> None:
        self.prepare_dir()
        config = self.dir / "config"
        if not config.exists():
            shutil.copytree(self.home / "config", config)
        for sub in ("data", "logs", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        (config / "opensearch.yml").write_text(
            "cluster.name: ingestd-testbed\n"
            "node.name: testbed-1\n"
            "discovery.type: single-node\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {self.port}\n"
            f"transport.port: {self.transport_port}\n"
            f"path.data: {self.dir / 'data'}\n"
            f"path.logs: {self.dir / 'logs'}\n"
            "action.auto_create_index: true\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
        )
        # Our own jvm.options: small heap and absolute paths (the shipped file logs GC relative to cwd).
        (config / "jvm.options").write_text(
            f"-Xms{self.heap}\n-Xmx{self.heap}\n"
            "-XX:+UseG1GC\n"
            "-Djava.io.tmpdir=${OPENSEARCH_TMPDIR}\n"
            f"-XX:HeapDumpPath={self.dir / 'data'}\n"
            f"-XX:ErrorFile={self.dir / 'logs'}/hs_err_pid%p.log\n"
            "18-:-Djava.security.manager=allow\n"
            "-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
            "org.opensearch.secure_sm.SecuredForkJoinWorkerThreadFactory\n"
        )
        chown_tree(self.dir, self.user)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        env = {
            "OPENSEARCH_JAVA_HOME": _java_home(),
            "OPENSEARCH_PATH_CONF": str(self.dir / "config"),
            "OPENSEARCH_TMPDIR": str(self.dir / "tmp"),
        }
        return [str(self.home / "bin" / "opensearch")], env, self.dir

    def ready(self) -> bool:
        health = http_ok(f"http://127.0.0.1:{self.port}/_cluster/health?wait_for_status=yellow&timeout=1s")
        return health is not None and health.get("status") in ("green", "yellow")

    def ports(self) -> list[int]:
        return [self.port, self.transport_port]

    def endpoints(self) -> dict[str, str]:
        return {"INGESTD_TEST_OPENSEARCH_URL": f"http://127.0.0.1:{self.port}"}
