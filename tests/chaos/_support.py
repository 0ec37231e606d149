"""Tools of the chaos suite: private servers it may break, a cuttable proxy, a supervisor, a paced feeder."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ingestd.e2e import Campaign, Chain, Ledger, RucioFeeder, chunked, iter_events
from ingestd.log import get_logger

logger = get_logger(__name__)


class TcpProxy:
    """A TCP forwarder whose listening socket and open connections can be cut and restored.

    Standing between the daemon and OpenSearch, :meth:`down` makes OpenSearch unreachable
    exactly as a stopped server would (connections reset, new ones refused) without
    touching the shared server; :meth:`up` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.cuts = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again) and forward."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stopped.clear()
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def down(self) -> None:
        """Stop listening and reset every open connection."""
        self._stopped.set()
        self.cuts += 1
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        with self._lock:
            doomed = list(self._connections)
            self._connections.clear()
        for connection in doomed:
            with contextlib.suppress(OSError):
                connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                connection.close()

    def close(self) -> None:
        """End the proxy."""
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, server))
            threading.Thread(target=self._pipe, args=(client, server), name="proxy-pipe", daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        sockets = [client, server]
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(sockets, [], [], 0.5)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (server if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(client)
                self._connections.discard(server)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@dataclass
class Supervisor:
    """What systemd or Kubernetes does for a chain's services: restart on exit or on a failed liveness probe.

    * A service that exits on its own is started again (``Restart=always``).
    * A service whose ``/healthz`` fails ``liveness_failures`` probes in a row, taken every
      ``liveness_period_s`` after a start-up grace, is killed (SIGKILL) and started again —
      the shipped Kubernetes manifests do the same with ``livenessProbe`` (15 s x 4).
    * A service with a stall check (records wait for it and the positions it committed have not
      moved for ``stall_s``) is killed and started again — what an operator does on the
      ``IngestdMirrorStalled`` and ``IngestdIngestStalled`` alerts (tens of minutes there,
      compressed here).

    Exits and kills caused by the test itself (inside :meth:`hands_off`) are not counted;
    everything else is, so a test reports recovery by restart apart from recovery by design.
    """

    chain: Chain
    liveness_period_s: float = 5.0
    liveness_failures: int = 3
    startup_grace_s: float = 30.0
    stall_s: float = 60.0
    stall_checks: dict[str, Callable[[], tuple[int, int] | None]] = field(default_factory=dict)
    """Service → a function returning (work available, work done) counters, or None when unknown."""
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    liveness_restarts: Counter[str] = field(default_factory=Counter)
    stall_restarts: Counter[str] = field(default_factory=Counter)
    _progress: dict[str, tuple[int, float]] = field(default_factory=dict)
    exit_codes: list[tuple[str, int | None]] = field(default_factory=list)
    _failed_probes: Counter[str] = field(default_factory=Counter)
    _paused: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @contextlib.contextmanager
    def hands_off(self, name: str) -> Iterator[None]:
        """Do not touch ``name`` while the test kills and restarts it itself."""
        with self._lock:
            self._paused.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._paused.discard(name)
                self._failed_probes[name] = 0

    def _restart_exited(self, name: str, service: Any) -> None:
        code = service.process.returncode
        self.unexpected_exits[name] += 1
        self.exit_codes.append((name, code))
        logger.warning("chaos_service_exited_restarting", service=name, code=code)
        with contextlib.suppress(Exception):
            service.start()

    def _probe(self, name: str, service: Any) -> None:
        if service.health_port is None or time.monotonic() - service.started_at < self.startup_grace_s:
            return
        try:
            status, _ = service.get("/healthz", timeout_s=3.0)
        except (OSError, ValueError):
            status = 0
        if status == 200:
            self._failed_probes[name] = 0
            return
        self._failed_probes[name] += 1
        if self._failed_probes[name] < self.liveness_failures:
            return
        self._failed_probes[name] = 0
        self.liveness_restarts[name] += 1
        logger.warning("chaos_liveness_probe_failed_restarting", service=name, status=status)
        with contextlib.suppress(Exception):
            service.kill()
            service.start()

    def _check_stall(self, name: str, service: Any) -> None:
        check = self.stall_checks.get(name)
        if check is None or time.monotonic() - service.started_at < self.startup_grace_s:
            return
        try:
            found = check()
        except Exception:  # a server of the check may be restarting: no verdict this time
            return
        if found is None:
            return
        available, done = found
        now = time.monotonic()
        last = self._progress.get(name)
        if done >= available or last is None or last[0] != done:
            self._progress[name] = (done, now)
            return
        if now - last[1] < self.stall_s:
            return
        self._progress.pop(name, None)
        self.stall_restarts[name] += 1
        logger.warning(
            "chaos_stalled_restarting", service=name, waiting=available - done, stalled_s=now - last[1]
        )
        with contextlib.suppress(Exception):
            service.kill()
            service.start()

    def _run(self) -> None:
        next_probe = time.monotonic() + self.liveness_period_s
        while not self._stop.wait(0.5):
            probe = time.monotonic() >= next_probe
            if probe:
                next_probe = time.monotonic() + self.liveness_period_s
            for name, service in self.chain.services.items():
                with self._lock:
                    if name in self._paused or service.process is None:
                        continue
                    if not service.alive():
                        self._restart_exited(name, service)
                    elif probe:
                        self._probe(name, service)
                        self._check_stall(name, service)

    def __enter__(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class PacedFeed:
    """Writes a campaign's events into Rucio at a steady rate from a thread; can be held back.

    ``hold`` pauses it (while the PostgreSQL server holding Rucio's database restarts:
    Rucio, the event source, is not what is under test).
    """

    chain: Chain
    campaign: Campaign
    ledger: Ledger
    rate: float
    chunk: int = 25
    allowed: threading.Event = field(default_factory=threading.Event)
    finishing: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    sent: int = 0
    _thread: threading.Thread | None = None
    _feeder: RucioFeeder | None = None

    def start(self) -> PacedFeed:
        self.allowed.set()
        self._feeder = self.chain.feeder()
        self._thread = threading.Thread(target=self._run, name="paced-feed", daemon=True)
        self._thread.start()
        return self

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Pause feeding; waits until the chunk in flight is acknowledged."""
        self.allowed.clear()
        if self._feeder is not None:
            with contextlib.suppress(Exception):
                self._feeder.wait_acknowledged(60)
        try:
            yield
        finally:
            self.allowed.set()

    def _run(self) -> None:
        assert self._feeder is not None
        try:
            self._feeder.wait_ready()
        except BaseException as error:  # reported by join()
            self.error = error
            return
        began = time.monotonic()
        paused = 0.0
        try:
            for chunk in chunked(iter_events(self.campaign, self.ledger), self.chunk):
                if not self.allowed.is_set():
                    waited = time.monotonic()
                    self.allowed.wait()
                    paused += time.monotonic() - waited
                due = began + paused + self.sent / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._feeder.send(chunk)
                self.sent += len(chunk)
                if self.finishing.is_set():
                    break  # the ledger holds exactly the events sent: chunks are recorded as they are made
            self._feeder.close()
        except BaseException as error:  # reported by join()
            self.error = error
            with contextlib.suppress(Exception):
                self._feeder.kill()

    def finish(self) -> None:
        """Stop after the chunk in hand (the campaign may hold more events than a run needs)."""
        self.finishing.set()
        self.allowed.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"feeding did not finish within {timeout_s} s ({self.sent} sent)")
        if self.error is not None:
            raise AssertionError(f"feeding failed: {self.error}") from self.error


def mirror_progress(chain: Chain) -> tuple[int, int] | None:
    """(records on the central cluster's facility topics, source positions the mirror committed).

    The mirror stores its positions in its group on the local cluster inside each
    transaction, so the second figure is what it has really copied, whatever process did it.
    """
    from confluent_kafka import TopicPartition

    from ingestd.kafka import make_consumer

    quiet = {"log_level": 0}  # the local broker may be restarting: its connection errors are expected
    central = make_consumer(chain.testbed.central, None, overrides=quiet)
    local = make_consumer(chain.testbed.local, chain.mirror_group_id, overrides=quiet)
    try:
        partitions = [TopicPartition(topic, p) for topic in chain.facility_topics for p in range(3)]
        available = sum(
            max(0, high - low)
            for low, high in (central.get_watermark_offsets(tp, timeout=5) for tp in partitions)
        )
        committed = local.committed(partitions, timeout=5)
        done = sum(tp.offset for tp in committed if tp.offset is not None and tp.offset > 0)
        return available, done
    finally:
        central.close()
        local.close()


def daemon_progress(chain: Chain) -> tuple[int, int] | None:
    """(offsets the daemon could have committed, offsets it committed) on the facility's local topics.

    The mirror writes in transactions, so each partition ends with a commit marker the
    daemon never commits past while idle: one offset per partition is not counted as waiting.
    """
    from confluent_kafka import TopicPartition

    from ingestd.kafka import make_consumer

    local = make_consumer(chain.testbed.local, chain.group_id, overrides={"log_level": 0})
    try:
        partitions = [TopicPartition(topic, p) for topic in chain.facility_topics for p in range(3)]
        committed = {
            (tp.topic, tp.partition): max(tp.offset, 0) for tp in local.committed(partitions, timeout=5)
        }
        done = sum(committed.values())
        pending = 0
        for tp in partitions:
            _, high = local.get_watermark_offsets(tp, timeout=5)
            pending += max(0, high - committed[(tp.topic, tp.partition)] - 1)
        return done + pending, done
    finally:
        local.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
