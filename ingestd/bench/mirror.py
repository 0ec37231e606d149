"""``ingestd bench mirror``: ``ingestd mirror`` against the real MirrorMaker 2, both exactly-once, one run.

The benchmark writes N records of B bytes to fresh source topics on the central
cluster, then mirrors them to the local cluster twice: with ``ingestd mirror``
(a child process, production defaults, prefix policy) and with MirrorMaker 2
(dedicated mode, ``java ... org.apache.kafka.connect.mirror.MirrorMaker``,
from the test bed's Kafka 3.9 jars), configured by :mod:`mirror.mm2` from the
same settings: exactly-once on (``exactly.once.source.support = enabled``,
``exactly.once.support = required``, ``read_committed`` source reads), same
compression, one task against one instance. Each tool writes to its own target
topic names (its own source alias), so the runs do not see each other.

For each tool a ``read_committed`` consumer of its target topics counts records
until all N are visible (and then reads to the end, so a duplicate would show
as a count above N). Reported per tool: ``records_per_s`` = N / (all visible -
target topics created), the copy rate once the tool is connected (both create
their target topics just before copying; the first records become visible only
when the first transaction commits, so that moment would flatter large
transactions); ``records_per_s_with_startup`` = N / (all visible - process
start); the start-up time; the CPU seconds the process used. ``ratio`` is
ours / MirrorMaker 2 on ``records_per_s``; the target is >= 1.0. The same
counting consumer runs for both, on the same machine.

Topics, groups and MirrorMaker 2's internal topics are deleted afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchError", "MirrorBenchResult", "ToolResult", "register", "run_benchmark"]

TARGET_RATIO = 1.0
KAFKA_VERSION = "3.9.2"


class BenchError(RuntimeError):
    """The benchmark could not run or a tool did not deliver every record; the message says which."""


@dataclass
class ToolResult:
    """The figures of one replicator."""

    tool: str
    records: int
    records_per_s: float
    records_per_s_with_startup: float
    startup_s: float
    first_visible_s: float
    elapsed_s: float
    cpu_s: float | None
    records_per_cpu_s: float | None
    startup_cpu_s: float | None
    """CPU seconds used until the target topics existed (imports, connections, discovery)."""
    cpu_us_per_record: float | None
    """CPU after start-up per record, in microseconds: the cost that grows with traffic."""
    visible_records: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class MirrorBenchResult:
    """The whole run, as printed by ``--json``."""

    benchmark: str
    records: int
    record_bytes: int
    topics: int
    partitions: int
    produce_records_per_s: float
    ingestd: ToolResult | None
    mirrormaker2: ToolResult | None
    ratio: float | None
    ratio_with_startup: float | None
    target: str
    meets_target: bool | None
    machine: dict[str, Any]


def register(subparsers: Any) -> None:
    """Add ``bench mirror``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mirror",
        help="records/s of `ingestd mirror` vs MirrorMaker 2, both exactly-once, on the same clusters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=200_000, help="records to mirror (default 200000)")
    parser.add_argument("--size", type=int, default=2000, help="value bytes per record (default 2000)")
    parser.add_argument("--topics", type=int, default=1, help="source topics (default 1)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3, as USDF)")
    parser.add_argument(
        "--source",
        default=os.environ.get("INGESTD_TEST_KAFKA_CENTRAL", "127.0.0.1:19092"),
        help="central cluster bootstrap (default $INGESTD_TEST_KAFKA_CENTRAL)",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("INGESTD_TEST_KAFKA_LOCAL", "127.0.0.1:29092"),
        help="local cluster bootstrap (default $INGESTD_TEST_KAFKA_LOCAL)",
    )
    parser.add_argument(
        "--kafka-lib",
        type=Path,
        default=Path(os.environ["INGESTD_TESTBED_KAFKA_LIB"])
        if os.environ.get("INGESTD_TESTBED_KAFKA_LIB")
        else None,
        help="folder of the Kafka 3.9 + MirrorMaker 2 jars (default $INGESTD_TESTBED_KAFKA_LIB)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds each tool may take (default 900)"
    )
    parser.add_argument("--skip-mm2", action="store_true", help="measure only ingestd mirror")
    parser.add_argument(
        "--mm2-max-poll-records",
        type=int,
        default=None,
        help="MirrorMaker 2's source max.poll.records (its transaction size); default: MM2's own (500)",
    )
    parser.add_argument("--keep", action="store_true", help="keep topics, groups and logs for inspection")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ingestd.log import LoggingSettings, configure_logging

    configure_logging(LoggingSettings(level="WARNING"), service="ingestd-bench")
    if not args.skip_mm2 and args.kafka_lib is None:
        print(
            "bench mirror: give --kafka-lib or set INGESTD_TESTBED_KAFKA_LIB (or --skip-mm2)", file=sys.stderr
        )
        return 2
    try:
        result = run_benchmark(
            records=args.records,
            size=args.size,
            topics=args.topics,
            partitions=args.partitions,
            source=args.source,
            target=args.target,
            kafka_lib=args.kafka_lib,
            timeout_s=args.timeout,
            run_mm2=not args.skip_mm2,
            keep=args.keep,
            mm2_max_poll_records=args.mm2_max_poll_records,
        )
    except BenchError as error:
        print(f"bench mirror: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: MirrorBenchResult) -> None:
    print(
        f"mirror benchmark: {result.records} records x {result.record_bytes} B, {result.topics} topic(s) x "
        f"{result.partitions} partitions (produced at {result.produce_records_per_s:,.0f} records/s)"
    )
    for tool in (result.ingestd, result.mirrormaker2):
        if tool is None:
            continue
        cpu = f"{tool.cpu_s:.1f} CPU s" if tool.cpu_s is not None else "CPU n/a"
        rate = f"{tool.records_per_s_with_startup:,.0f}"
        print(
            f"  {tool.tool:14} {tool.records_per_s:>10,.0f} records/s  ({rate} "
            f"with {tool.startup_s:.1f} s start-up; {cpu})"
        )
    if result.ratio is not None:
        print(f"  ratio ingestd / MirrorMaker 2: {result.ratio:.2f} (target {result.target})")


def run_benchmark(
    *,
    records: int,
    size: int,
    topics: int,
    partitions: int,
    source: str,
    target: str,
    kafka_lib: Path | None,
    timeout_s: float,
    run_mm2: bool = True,
    keep: bool = False,
    mm2_max_poll_records: int | None = None,
) -> MirrorBenchResult:
    """Produce, mirror with each tool, measure; see the module docstring.

    Raises
    ------
    BenchError
        A tool failed, timed out, or did not deliver exactly ``records`` records.
    """
    from ingestd.kafka import KafkaConnection

    if records < 1 or size < 1 or topics < 1 or partitions < 1:
        raise BenchError("records, size, topics and partitions must be positive")
    run_id = uuid.uuid4().hex[:8]
    run = _Run(
        central=KafkaConnection(bootstrap_servers=source, client_id="ingestd-bench"),
        local=KafkaConnection(bootstrap_servers=target, client_id="ingestd-bench"),
        run_id=run_id,
        names=[f"bench.mirror.{run_id}.{index}" for index in range(topics)],
        partitions=partitions,
        records=records,
        work=Path(tempfile.mkdtemp(prefix=f"ingestd-bench-mirror-{run_id}-")),
        timeout_s=timeout_s,
    )
    try:
        produce_rate = _produce(run, size)
        ours = _run_ingestd(run)
        theirs = None
        if run_mm2:
            if kafka_lib is None:
                raise BenchError("MirrorMaker 2 needs the Kafka jars (kafka_lib)")
            theirs = _run_mm2(run, kafka_lib, mm2_max_poll_records)
    finally:
        if not keep:
            _cleanup(run)
            shutil.rmtree(run.work, ignore_errors=True)
    ratio = ours.records_per_s / theirs.records_per_s if theirs else None
    ratio_startup = ours.records_per_s_with_startup / theirs.records_per_s_with_startup if theirs else None
    return MirrorBenchResult(
        benchmark="mirror",
        records=records,
        record_bytes=size,
        topics=topics,
        partitions=partitions,
        produce_records_per_s=round(produce_rate, 1),
        ingestd=ours,
        mirrormaker2=theirs,
        ratio=round(ratio, 3) if ratio is not None else None,
        ratio_with_startup=round(ratio_startup, 3) if ratio_startup is not None else None,
        target=f">= {TARGET_RATIO} (records_per_s, both exactly-once, same clusters, same run)",
        meets_target=(ratio >= TARGET_RATIO) if ratio is not None else None,
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kafka": KAFKA_VERSION,
            "work_dir": str(run.work) if keep else None,
        },
    )


@dataclass
class _Run:
    """One benchmark run: clusters, names, sizes, and what it created (for the clean-up)."""

    central: Any
    local: Any
    run_id: str
    names: list[str]
    partitions: int
    records: int
    work: Path
    timeout_s: float
    target_topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def pattern(self) -> str:
        return rf"bench\.mirror\.{self.run_id}\..*"


# -- the steps -------------------------------------------------------------------------------------
def _produce(run: _Run, size: int) -> float:
    from ingestd.kafka import ensure_topics, make_admin, make_producer

    ensure_topics(make_admin(run.central), run.names, partitions=run.partitions)
    producer = make_producer(run.central, overrides={"linger.ms": 20, "compression.type": "lz4"})
    filler = os.urandom(max(size, 16)).hex().encode()
    began = time.monotonic()
    for index in range(run.records):
        value = (b"%d:" % index + filler)[:size]
        while True:
            try:
                producer.produce(run.names[index % len(run.names)], value, b"key-%d" % (index % 1000))
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise BenchError("could not write the source records")
    return run.records / (time.monotonic() - began)


def _run_ingestd(run: _Run) -> ToolResult:
    import yaml

    from mirror import MirrorSettings, ReplicationPolicy

    settings = MirrorSettings(
        source=run.central,
        target=run.local,
        source_alias=f"ours{run.run_id}",
        policy=ReplicationPolicy.prefix,
        selection={"patterns": [run.pattern()]},
        instance="bench",
        http_host="127.0.0.1",
        http_port=0,
        target_replication_factor=1,
    )
    targets = [settings.naming().target_topic(name) for name in run.names]
    run.target_topics += targets
    run.groups.append(settings.effective_group_id)
    config = run.work / "ingestd-mirror.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    shown = settings.model_dump(mode="json", exclude={"source", "target", "selection"})
    return _measure(
        run,
        tool="ingestd mirror",
        command=[sys.executable, "-m", "ingestd", "mirror", "--config", str(config)],
        log_path=run.work / "ingestd-mirror.log",
        targets=targets,
        config={"exactly_once": "transactions, positions on the target (KIP-447 fencing)", **shown},
    )


def _run_mm2(run: _Run, kafka_lib: Path, max_poll_records: int | None) -> ToolResult:
    from mirror import MirrorSettings, ReplicationPolicy
    from mirror.mm2 import Mm2Options, render_mm2_properties

    alias, target_alias = f"mm2{run.run_id}", f"local{run.run_id}"
    settings = MirrorSettings(
        source=run.central,
        target=run.local,
        source_alias=alias,
        target_alias=target_alias,
        policy=ReplicationPolicy.prefix,
        selection={"patterns": [run.pattern()]},
        instance="bench",
        target_replication_factor=1,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        rest_port = probe.getsockname()[1]
    options = Mm2Options(internal_replication_factor=1, rest_listener=f"http://127.0.0.1:{rest_port}")
    properties = render_mm2_properties(settings, options)
    if max_poll_records is not None:
        properties += f"{alias}.consumer.max.poll.records = {max_poll_records}\n"
    (run.work / "mm2.properties").write_text(properties)
    (run.work / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    targets = [settings.naming().target_topic(name) for name in run.names]
    run.target_topics += [
        *targets,
        f"mm2-offsets.{alias}.internal",
        f"mm2-configs.{alias}.internal",
        f"mm2-status.{alias}.internal",
        f"mm2-offset-syncs.{alias}.internal",
        f"mm2-offset-syncs.{target_alias}.internal",
    ]
    config = {
        key.strip(): value.strip().replace("\\\\", "\\")
        for key, _, value in (line.partition("=") for line in properties.splitlines())
        if key.strip() and not key.startswith("#") and "bootstrap" not in key
    }
    return _measure(
        run,
        tool="MirrorMaker 2",
        command=[
            "java",
            "-Xms256m",
            "-Xmx1g",
            f"-Dlog4j.configuration=file:{run.work / 'log4j.properties'}",
            "-cp",
            f"{kafka_lib}/*",
            "org.apache.kafka.connect.mirror.MirrorMaker",
            str(run.work / "mm2.properties"),
        ],
        log_path=run.work / "mm2.log",
        targets=targets,
        config=config,
    )


def _measure(
    run: _Run, *, tool: str, command: list[str], log_path: Path, targets: list[str], config: dict[str, Any]
) -> ToolResult:
    from confluent_kafka import TopicPartition

    from ingestd.kafka import make_consumer

    records = run.records
    consumer = make_consumer(run.local, None, read_committed=True, overrides={"fetch.wait.max.ms": 100})
    with open(log_path, "ab") as log:
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = began + run.timeout_s
        while True:
            existing = consumer.list_topics(timeout=10).topics
            if all(name in existing and existing[name].partitions for name in targets):
                break
            _check_alive(tool, process, log_path, deadline)
            time.sleep(0.05)
        # Both tools create their target topics once connected, right before they copy.
        ready = time.monotonic()
        startup_cpu_s = _cpu_seconds(process.pid)
        consumer.assign([TopicPartition(name, p, 0) for name in targets for p in range(run.partitions)])
        count, first = 0, None
        while count < records:
            _check_alive(tool, process, log_path, deadline, f"{count} of {records} records visible")
            messages = consumer.consume(10_000, 0.2)
            if messages and first is None:
                first = time.monotonic()
            count += sum(1 for message in messages if message.error() is None)
        done = time.monotonic()
        cpu_s = _cpu_seconds(process.pid)
        count += _drain(consumer, targets, run.partitions)
    finally:
        _stop(process)
        consumer.close()
    assert first is not None
    if count != records:
        raise BenchError(f"{tool}: {count} records on the target for {records} written (duplicates)")
    return ToolResult(
        tool=tool,
        records=records,
        records_per_s=round(records / (done - ready), 1),
        records_per_s_with_startup=round(records / (done - began), 1),
        startup_s=round(ready - began, 2),
        first_visible_s=round(first - began, 2),
        elapsed_s=round(done - began, 2),
        cpu_s=round(cpu_s, 2) if cpu_s is not None else None,
        records_per_cpu_s=round(records / cpu_s, 1) if cpu_s else None,
        startup_cpu_s=round(startup_cpu_s, 2) if startup_cpu_s is not None else None,
        cpu_us_per_record=round((cpu_s - startup_cpu_s) / records * 1e6, 1)
        if cpu_s is not None and startup_cpu_s is not None
        else None,
        visible_records=count,
        config=config,
    )


def _drain(consumer: Any, targets: list[str], partitions: int) -> int:
    """Read on to the end (last stable offsets); any record found is one too many."""
    from confluent_kafka import TopicPartition

    extra = 0
    wanted = [TopicPartition(name, p) for name in targets for p in range(partitions)]
    ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(wanted)}
        if all(positions[key] >= end for key, end in ends.items() if end > 0):
            break
        extra += sum(1 for message in consumer.consume(10_000, 0.2) if message.error() is None)
    return extra


def _check_alive(
    tool: str, process: subprocess.Popen[bytes], log_path: Path, deadline: float, progress: str = ""
) -> None:
    if process.poll() is not None:
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        raise BenchError(f"{tool} exited with {process.returncode} {progress}; log tail:\n" + "\n".join(tail))
    if time.monotonic() > deadline:
        raise BenchError(f"{tool} timed out ({progress or 'target topics never appeared'})")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def _cleanup(run: _Run) -> None:
    """Delete what the run created; a failure is reported, not fatal (the figures are already taken)."""
    from confluent_kafka import KafkaError, KafkaException

    from ingestd.kafka import make_admin

    for connection, topics in ((run.central, run.names), (run.local, run.target_topics)):
        admin = make_admin(connection)
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [name for name in topics if name in existing]
        if doomed:
            for name, future in admin.delete_topics(doomed, operation_timeout=30).items():
                try:
                    future.result(timeout=30)
                except Exception as error:  # reported; the run's figures stand
                    print(f"bench mirror: could not delete topic {name}: {error}", file=sys.stderr)
    if run.groups:
        admin = make_admin(run.local)
        for name, future in admin.delete_consumer_groups(run.groups, request_timeout=30).items():
            try:
                future.result(timeout=30)
            except KafkaException as error:
                # A static member stays in the group for its session timeout after the stop; the
                # empty group then expires by itself (offsets.retention.minutes).
                if error.args[0].code() not in (KafkaError.GROUP_ID_NOT_FOUND, KafkaError.NON_EMPTY_GROUP):
                    print(f"bench mirror: could not delete group {name}: {error}", file=sys.stderr)
