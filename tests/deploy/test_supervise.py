"""``ingestd site supervise``: the systemd notification protocol, spoken for a service, without systemd.

The test plays systemd's part: it binds the notification socket, starts the
supervisor the way a rendered unit does (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``),
and reads the datagrams.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_SERVICE = r"""
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, marker, code = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(marker + ".pid", "w") as f:
    f.write(str(os.getpid()))
if code != 0:
    sys.exit(code)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            status, body = 200, {"last_loop_seconds_ago": 0}
        else:
            status, body = 503, {"not_ready": {"registry": "database unreachable"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", port), Handler)
def stop(signum, frame):
    with open(marker + ".signal", "w") as f:
        f.write(str(signum))
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def supervisor(tmp_path: Path, port: int, code: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE_SERVICE)
    env = {key: value for key, value in os.environ.items() if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra_env)
    env["INGESTD_SUPERVISE_HEALTH_URL"] = f"http://127.0.0.1:{port}/healthz"
    command = [
        sys.executable, "-m", "ingestd", "site", "supervise", "--",
        sys.executable, str(script), str(port), str(tmp_path / "marker"), str(code),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env)


def read_messages(sock: socket.socket, until: str, timeout_s: float = 30.0) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in messages[-1]:
            return messages
    raise AssertionError(f"no {until!r} within {timeout_s} s; got {messages}")


def test_ready_watchdog_status_and_clean_stop(tmp_path: Path, notify_socket: socket.socket) -> None:
    port = free_port()
    process = supervisor(
        tmp_path, port, 0, {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1500000"}
    )
    try:
        first = read_messages(notify_socket, "READY=1")
        ready = first[-1]
        assert f"MAINPID={process.pid}" in ready
        pets = read_messages(notify_socket, "WATCHDOG=1")
        pets += read_messages(notify_socket, "WATCHDOG=1")
        texts = "\n".join(first + pets)
        assert "STATUS=not ready: registry: database unreachable" in texts
        child_pid = int((tmp_path / "marker.pid").read_text())
        assert child_pid != process.pid, "under systemd the service runs as the supervisor's child"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        read_messages(notify_socket, "STOPPING=1", timeout_s=5)
        assert (tmp_path / "marker.signal").read_text() == str(int(signal.SIGTERM)), "SIGTERM was forwarded"
    finally:
        if process.poll() is None:
            process.kill()


def test_exit_status_of_the_service_is_kept(tmp_path: Path, notify_socket: socket.socket) -> None:
    process = supervisor(tmp_path, free_port(), 2, {"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert process.wait(timeout=60) == 2, "RestartPreventExitStatus=2 relies on the service's own status"


def test_without_systemd_the_service_replaces_the_supervisor(tmp_path: Path) -> None:
    port = free_port()
    process = supervisor(tmp_path, port, 0, {})
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "marker.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int((tmp_path / "marker.pid").read_text()) == process.pid, "exec, not a child process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_supervise_needs_a_command_and_a_url() -> None:
    from ingestd.cli import main

    env_before = os.environ.pop("INGESTD_SUPERVISE_HEALTH_URL", None)
    try:
        assert main(["site", "supervise", "--"]) == 2
        assert main(["site", "supervise", "--health-url", "http://127.0.0.1:1/healthz"]) == 2
    finally:
        if env_before is not None:
            os.environ["INGESTD_SUPERVISE_HEALTH_URL"] = env_before
