"""Prometheus from Debian's packages, scraping targets that tests register at run time.

Targets come from ``file_sd_configs``: a test writes ``targets/<name>.json`` (a list of
``{"targets": ["127.0.0.1:PORT"], "labels": {...}}``) and Prometheus picks it up at once
(it watches the folder). Scrapes every second so tests see values quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._base import Layout, Server, ServerError, chown_tree, ensure_apt_packages, http_ok, run_as_user, which

__all__ = ["PrometheusServer"]


class PrometheusServer(Server):
    """The test bed's Prometheus."""

    name = "prometheus"
    group = "prometheus"
    start_timeout_s = 60.0

    def __init__(self, layout: Layout, port: int) -> None:
        super().__init__(layout)
        self.port = port

    def install(self) -> None:
        ensure_apt_packages(["prometheus"], lambda: which("prometheus") is not None)
        self.user = run_as_user()

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    def configure(self) -> None:
        self.prepare_dir()
        self.targets_dir.mkdir(exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
                {
                    "job_name": "testbed",
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1s"}
                    ],
                },
            ],
        }
        # JSON is valid YAML; no YAML library is needed before the virtualenv exists.
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=2))
        chown_tree(self.dir, self.user)
        # Tests (possibly another user) write target files here.
        self.targets_dir.chmod(0o777)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        binary = which("prometheus")
        if binary is None:
            raise ServerError("prometheus not found; install Debian's prometheus package")
        return (
            [
                str(binary),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2d",
                "--log.level=warn",
            ],
            {},
            self.dir,
        )

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}/-/ready") is not None

    def ports(self) -> list[int]:
        return [self.port]

    def endpoints(self) -> dict[str, str]:
        return {
            "INGESTD_TEST_PROMETHEUS_URL": f"http://127.0.0.1:{self.port}",
            "INGESTD_TEST_PROMETHEUS_TARGETS_DIR": str(self.targets_dir),
        }
