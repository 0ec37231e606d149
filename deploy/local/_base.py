"""Shared machinery of the local test bed: folders, the unprivileged user, processes, probes.

Standard library only, so ``python3 -m deploy.local up`` works on a fresh machine
before any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Layout",
    "Server",
    "ServerError",
    "ensure_apt_packages",
    "free_port",
    "http_ok",
    "port_open",
    "process_tree_cpu_s",
    "process_tree_rss_bytes",
]

TESTBED_USER = "ingestd-tb"
"""Unprivileged account the servers run as when the test bed is driven by root.

PostgreSQL and OpenSearch refuse to run as root; running every server as the same
ordinary user keeps file ownership in the state folder uniform.
"""


class ServerError(RuntimeError):
    """A server could not be installed, started or reached; the message says what to do."""


def log(message: str) -> None:
    """Progress line on stderr (the env file and status go to stdout)."""
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Layout:
    """Where the test bed keeps its state (data, logs, pids) and its download cache.

    Root gets system folders, because /root is not traversable by the unprivileged
    server user; anyone else gets XDG folders in their home. Both can be
    overridden with ``INGESTD_TESTBED_HOME`` and ``INGESTD_TESTBED_CACHE``.
    """

    state: Path
    cache: Path

    @classmethod
    def default(cls) -> Layout:
        """Resolve the folders from the environment."""
        if os.geteuid() == 0:
            state_default, cache_default = (
                Path("/var/lib/ingestd-testbed"),
                Path("/var/cache/ingestd-testbed"),
            )
        else:
            home = Path.home()
            state_default = Path(os.environ.get("XDG_STATE_HOME", home / ".local/state")) / "ingestd-testbed"
            cache_default = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache")) / "ingestd-testbed"
        return cls(
            state=Path(os.environ.get("INGESTD_TESTBED_HOME", state_default)),
            cache=Path(os.environ.get("INGESTD_TESTBED_CACHE", cache_default)),
        )

    @property
    def env_file(self) -> Path:
        """The file holding every running server's endpoint as ``KEY=value`` lines."""
        return self.state / "testbed.env"

    def server_dir(self, name: str) -> Path:
        """The data folder of one server."""
        return self.state / name


def run_as_user() -> str | None:
    """Return the user servers must run as, creating it if needed; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(TESTBED_USER)
    except KeyError:
        log(f"creating unprivileged user {TESTBED_USER} to run the servers")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TESTBED_USER],
            check=True,
        )
    return TESTBED_USER


def chown_tree(path: Path, user: str | None) -> None:
    """Give ``path`` (recursively) to the server user."""
    if user is None:
        return
    info = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, info.pw_uid, info.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), info.pw_uid, info.pw_gid, follow_symlinks=False)


_apt_updated = False


def ensure_apt_packages(packages: Sequence[str], probe: Callable[[], bool]) -> None:
    """Install Debian packages when ``probe`` says they are missing (root only)."""
    global _apt_updated  # noqa: PLW0603 - one apt-get update per process is the point
    if probe():
        return
    if os.geteuid() != 0:
        names = " ".join(packages)
        raise ServerError(f"missing Debian packages {names}: run `sudo apt-get install -y {names}`")
    log(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if not probe():
        raise ServerError(f"installed {' '.join(packages)} but the program is still not found")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for private servers of a test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    """GET ``url``; return its JSON body (or an empty dict) on 2xx, None otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def pid_alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def _process_tree(pid: int) -> Iterator[int]:
    """``pid`` and all its descendants (PostgreSQL forks a backend per task)."""
    stack = [pid]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(_children(current))


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for member in _process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants, including children already reaped.

    ``utime + stime`` of every live process of the tree, plus ``cutime + cstime`` (the
    CPU of children that exited and were waited for: PostgreSQL's finished backends).
    """
    ticks = 0
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Server(ABC):
    """One server of the test bed.

    Subclasses say how to install, configure, start and probe; this class keeps the
    pid file, the log file, the idempotent ``up`` and the clean ``down``.
    """

    name: str
    """Folder name and label, e.g. ``kafka-central``."""
    group: str
    """What ``--only`` selects it by: kafka, postgres, opensearch, prometheus."""
    start_timeout_s: float = 120.0

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.server_dir(self.name)
        self.user: str | None = None

    # -- what subclasses provide -------------------------------------------------
    @abstractmethod
    def install(self) -> None:
        """Fetch and unpack what the server needs (cached; fast when already done)."""

    @abstractmethod
    def configure(self) -> None:
        """Write configuration and initialise the data folder (idempotent)."""

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """Return the argv, extra environment and working folder to start the server."""

    @abstractmethod
    def ready(self) -> bool:
        """Return whether the server really answers its protocol."""

    @abstractmethod
    def ports(self) -> list[int]:
        """Ports the server binds (checked for squatters before starting)."""

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Environment variables describing the running server, for tests and clients."""

    # -- lifecycle ---------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def pid(self) -> int | None:
        """Pid of the running server, if its pid file names a live process."""
        try:
            pid = int(self.pid_file.read_text().strip().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        """Whether our server process is alive (it may still be starting)."""
        return self.pid() is not None

    def start(self) -> None:
        """Spawn the server detached from this process (it outlives ``up``)."""
        squatters = [p for p in self.ports() if port_open(p)]
        if squatters:
            raise ServerError(
                f"{self.name}: port(s) {squatters} already in use by a process the test bed did not start; "
                f"stop it or set other ports (see `python -m deploy.local --help`)"
            )
        argv, env, cwd = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user,
            )
        self.pid_file.write_text(f"{process.pid}\n")

    def wait_ready(self) -> None:
        """Block until :meth:`ready`, or raise with the tail of the log when the server dies or stalls."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not self.running():
                raise ServerError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            time.sleep(0.5)
        raise ServerError(
            f"{self.name} did not answer within {self.start_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout_s``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            time.sleep(0.5)
        self.pid_file.unlink(missing_ok=True)

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL the server's process group: no clean shutdown, sessions and leadership just vanish.

        For tests of a crash (a private server only); :meth:`start` brings it back.
        """
        pid = self.pid()
        if pid is not None:
            self.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server's process group (SIGSTOP freezes it with its connections open)."""
        pid = self.pid()
        if pid is None:
            raise ServerError(f"{self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signum)

    def memory_bytes(self) -> int:
        """Resident memory of the server's process tree."""
        pid = self.pid()
        return process_tree_rss_bytes(pid) if pid is not None else 0

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the server log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def prepare_dir(self) -> None:
        """Create the data folder, owned by the server user."""
        self.dir.mkdir(parents=True, exist_ok=True)
        chown_tree(self.dir, self.user)


def which(program: str, extra_dirs: Sequence[Path] = ()) -> Path | None:
    """Find a program on PATH or in ``extra_dirs``."""
    for directory in extra_dirs:
        candidate = directory / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(program)
    return Path(found) if found else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent ``up``/``down`` runs (e.g. two pytest sessions starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
