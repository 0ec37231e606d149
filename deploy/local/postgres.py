"""A private PostgreSQL 15 cluster from Debian's packages.

Trust authentication on 127.0.0.1 only; the superuser is ``postgres``. Tests get
their own database or schema inside it (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from ._base import Layout, Server, ServerError, ensure_apt_packages, log, run_as_user

__all__ = ["PostgresServer", "postgres_bindir"]

PREFERRED_MAJOR = "15"


def postgres_bindir() -> Path | None:
    """The folder with initdb/pg_ctl/postgres, preferring PostgreSQL 15 (what the DFs run)."""
    base = Path("/usr/lib/postgresql")
    preferred = base / PREFERRED_MAJOR / "bin"
    if (preferred / "postgres").exists():
        return preferred
    candidates = sorted(base.glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name), reverse=True)
    return candidates[0].parent if candidates else None


class PostgresServer(Server):
    """The test bed's PostgreSQL cluster."""

    name = "postgres"
    group = "postgres"
    start_timeout_s = 60.0

    def __init__(self, layout: Layout, port: int) -> None:
        super().__init__(layout)
        self.port = port
        self.bindir: Path | None = None

    def install(self) -> None:
        ensure_apt_packages(["postgresql"], lambda: postgres_bindir() is not None)
        self.bindir = postgres_bindir()
        self.user = run_as_user()

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def _bin(self, program: str) -> str:
        if self.bindir is None:
            self.bindir = postgres_bindir()
        if self.bindir is None:
            raise ServerError("PostgreSQL binaries not found; install Debian's postgresql package")
        return str(self.bindir / program)

    def configure(self) -> None:
        self.prepare_dir()
        if (self.data / "PG_VERSION").exists():
            return
        log("postgres: initdb")
        subprocess.run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            user=self.user,
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# ingestd test bed\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "max_connections = 300\n"
                # A 1M-event run writes a 1 GB registry and drains a 2.7 GB Rucio table: with 256 MB
                # the backends evicted dirty pages themselves and re-read the table on every plan
                # (the publisher's sorted scans took 26.9 s of statement time, 9.9 s with 1 GB).
                "shared_buffers = 1GB\n"
                "max_prepared_transactions = 50\n"
                "log_min_messages = warning\n"
                # A registry takes a write-heavy stream: with the defaults (1 GB, 5 min) a 1M-event
                # run checkpoints every few seconds, and the first change of each page after a
                # checkpoint writes the whole page to the WAL (45 % of the registry inserts' WAL
                # measured with the defaults, 11 % with these).
                "max_wal_size = 4GB\n"
                "checkpoint_timeout = 15min\n"
            )

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        # The postmaster itself runs in the foreground under our pid file, so `down`
        # and `status` treat it like every other server.
        return [self._bin("postgres"), "-D", str(self.data)], {}, self.dir

    def ready(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            check=False,
        )
        return result.returncode == 0

    def stop(self, timeout_s: float = 30.0) -> None:
        # SIGTERM would be PostgreSQL's "smart" shutdown, which waits for clients; SIGINT is "fast".
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.running():
                time.sleep(0.2)
        super().stop(timeout_s=5.0)

    def ports(self) -> list[int]:
        return [self.port]

    def endpoints(self) -> dict[str, str]:
        return {
            "INGESTD_TEST_POSTGRES_URL": f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
            "INGESTD_TESTBED_POSTGRES_BIN": self._bin(""),
        }
