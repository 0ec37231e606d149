"""Run ``python -m ingestd ...`` as a real process, as a supervisor would, and read its health port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[3]


def ingestd_command(*args: str) -> list[str]:
    """The command line of ``ingestd ARGS`` with this interpreter."""
    return [sys.executable, "-m", "ingestd", *args]


FAULTS = Path(__file__).resolve().parent / "faults"


def clean_environment(*, faults: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a child process: no INGESTD_* settings leak in except ``extra``.

    ``faults`` puts the fault-injection ``sitecustomize`` on the path (see faults/).
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INGESTD_") or k.startswith("INGESTD_TEST")
    }
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(FAULTS), str(REPO)] if faults else [str(REPO)])
    return env


@dataclass
class DaemonProcess:
    """One ``ingestd run`` process with its log and ready file."""

    config: Path
    workdir: Path
    name: str = "daemon"
    env: dict[str, str] = field(default_factory=dict)
    faults: bool = False
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def ready_file(self) -> Path:
        return self.workdir / f"{self.name}.ready.json"

    def start(self) -> DaemonProcess:
        self.ready_file.unlink(missing_ok=True)
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n=== start {self.starts} ===\n".encode())
            self.process = subprocess.Popen(
                ingestd_command("run", "--config", str(self.config), "--ready-file", str(self.ready_file)),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=clean_environment(faults=self.faults, **self.env),
            )
        return self

    def port(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                try:
                    port: int = json.loads(self.ready_file.read_text())["port"]
                    return port
                except (ValueError, KeyError):
                    pass
            self.assert_running()
            time.sleep(0.05)
        raise AssertionError(f"daemon wrote no ready file in {timeout_s} s; log:\n{self.tail()}")

    def health(self, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"daemon exited with {code}; log:\n{self.tail()}")

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def dump_stacks(self) -> None:
        """Make a process started with ``faults`` (and INGESTD_FAULT_STACKS_ON_USR1) log its stacks."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def sql_url(registry_url: str) -> str:
    """A psycopg URL for a SQLAlchemy registry URL."""
    return registry_url.replace("postgresql+psycopg://", "postgresql://")


def dataset_count(registry_url: str) -> int:
    with psycopg.connect(sql_url(registry_url), connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM dataset").fetchone()
        assert row is not None
        return int(row[0])
