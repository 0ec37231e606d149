"""``ingestd bench e2e``: the whole chain on real servers, and what Rubin runs today, in the same run.

For each ``--events N``:

1. **Generate** N realistic ``transfer-done`` events (:class:`ingestd.e2e.Campaign`: FrDF and
   UKDF destinations, raws, data products, Butler zips and dimension files, the files they
   point to) and write them into a fresh copy of a Rucio database with Rucio's own
   ``add_messages``, ``transferred_at`` set at insertion.
2. **Ours**: publisher → central Kafka → ``ingestd mirror`` (FrDF's topics) → local Kafka →
   ``ingestd run`` → PostgreSQL registry, OpenSearch documents on, every service a process
   registered with Prometheus. ``--daemons R`` runs R daemons in one consumer group, as a
   deployment's replicas share the facility's partitions (the prod overlay runs two).
   Without ``--rate`` the table is filled first and the clock starts when the publisher is
   ready or publishes, whichever is first (throughput: a backlog drains); with ``--rate R`` all
   services run while events are inserted at R per second (latency at a given load).
3. **Reconcile** Rucio rows, Kafka records on both clusters, registry datasets and dead
   letters against the generator's ledger: 0 lost and 0 duplicated is required.
4. **Anchor** (unless ``--skip-anchor``): MirrorMaker 2 copies the same central topics and a
   ctrl_ingestd-equivalent consumer (:mod:`ingestd.e2e.anchor`: auto-commit,
   ``DatasetRef.from_json`` + ``Butler.ingest`` on the real ``lsst-daf-butler``, batches of 50)
   ingests up to ``--anchor-events`` of them (it manages ~800/s at best, so large runs are
   capped; rates are compared, and the output says how many it handled).

Reported per N: events/s over the run and datasets/s in steady state (10 %-90 % of the
registrations), p50/p90/p99 latency from ``transferred_at`` to the registry commit (from
the event documents in OpenSearch, and a lower bound from the registry's own ingest time),
peak resident memory and CPU seconds of every service, the reconciliation, the anchor's
figures and the ratio ours / anchor. With several N, the spread of the rate and the growth
of each service's peak memory across them. Targets (stated, not asserted): >= 5,000
events/s sustained; p99 < 1 s at 1,000 events/s; rate within 20 % from 10k to 1M events;
memory flat.

Progress goes to standard error; ``--json`` prints one JSON document on standard output.
Needs the test bed (``source <(python3 -m deploy.local env)``) and the source checkout's
``deploy/`` (run ``python -m ingestd bench e2e`` from the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._host import HostSpeedProbe, host_speed

__all__ = ["E2EResult", "register", "run_e2e"]

TARGET_EVENTS_PER_S = 5_000.0
TARGET_P99_S = 1.0
TARGET_P99_RATE = 1_000.0
TARGET_RATE_SPREAD = 0.20
CROWDED_PARTITIONS = 1_000
"""Partitions of other topics on a test-bed broker above which the benchmark warns (its figures suffer)."""
DRAIN_PUBLISHER_POLL_S = 1.0
"""The publisher's poll interval in drain mode: its shipped default (rate mode polls every 50 ms)."""


def _progress(message: str) -> None:
    print(f"[bench e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class ServiceFigures:
    """Memory and CPU of one service over the run."""

    peak_rss_mb: float
    cpu_s: float
    rss_mb_over_time: list[float]


@dataclass
class E2EResult:
    """One ``--events N`` run."""

    events: int
    mode: str
    rate_requested: float | None
    facility_events: int
    datasets: int
    dimension_files: int
    by_facility_and_kind: dict[str, int]
    generation_and_rucio_s: float
    rucio_rows_per_s: float
    elapsed_s: float
    events_per_s: float
    datasets_per_s: float
    steady_datasets_per_s: float | None
    latency_opensearch: dict[str, Any] | None
    latency_registry: dict[str, Any]
    services: dict[str, ServiceFigures]
    reconciliation: dict[str, Any]
    exit_codes: dict[str, int | None]
    prometheus_registered_events: float | None
    registered_by_daemon: dict[str, int]
    """Events each daemon replica registered (its own counter): how evenly the group shared the work."""
    stage_mean_s: dict[str, float]
    """Mean seconds per batch of each daemon stage and of the mirror's replication, from their /metrics."""
    anchor: dict[str, Any] | None
    ratio_events_per_s: float | None
    ratio_steady_datasets_per_s: float | None
    tuning: dict[str, Any]
    run_id: str
    notes: list[str] = field(default_factory=list)
    servers_cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each test-bed server (process tree) used while the clock ran."""
    cpu_ms_per_event: float | None = None
    """Our services' CPU over the run plus the servers' over the clock, per event."""
    cpu_bound_events_per_s: float | None = None
    """The rate this machine's cores allow at that cost: the ceiling of the whole chain here."""
    host_speed: dict[str, float | int] | None = None
    """The host's Python speed, sampled every 10 s over the run, fill included (lower is faster)."""


def register(subparsers: Any) -> None:
    """Add ``bench e2e``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "e2e",
        help="the whole chain (Rucio -> publisher -> Kafka -> mirror -> Kafka -> daemon -> registry) "
        "against MirrorMaker 2 + a ctrl_ingestd-equivalent consumer on the real Butler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[10_000],
        metavar="N",
        help="events per run; several values run one after the other (e.g. 10000 100000 1000000)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="insert R events/s into Rucio while the chain runs (latency at load); default: fill the "
        "table first, then measure how fast the chain drains it",
    )
    parser.add_argument("--skip-anchor", action="store_true", help="do not run the anchor path")
    parser.add_argument(
        "--anchor-events",
        type=int,
        default=20_000,
        metavar="M",
        help="events the anchor consumer handles at most (default 20000; it is ~10x slower)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="daemon verifies each file's size and checksum (writes the files)",
    )
    parser.add_argument("--daemon-batch", type=int, default=2000, help="daemon batch size (default 2000)")
    parser.add_argument(
        "--daemons",
        type=int,
        default=1,
        metavar="R",
        help="daemon replicas in one consumer group (default 1; the prod overlay deploys 2)",
    )
    parser.add_argument(
        "--publisher-batch",
        type=int,
        default=10_000,
        help="publisher batch size (default 10000, the publisher's own default)",
    )
    parser.add_argument(
        "--daemon-wait",
        type=float,
        default=0.05,
        help="daemon: longest wait for a batch to fill, s (default 0.05, the daemon's own default)",
    )
    parser.add_argument(
        "--mirror-wait-ms",
        type=int,
        default=20,
        help="mirror: longest wait before a transaction, ms (default 20, the mirror's own default)",
    )
    parser.add_argument(
        "--zip-share", type=float, default=0.02, help="fraction of the facility's events that are zips (0.02)"
    )
    parser.add_argument(
        "--dim-share", type=float, default=0.01, help="fraction that are dimension files (default 0.01)"
    )
    parser.add_argument("--seed", type=int, default=20250601, help="seed of the event mix")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds a run may take (default 7200)")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep databases, topics and files")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.set_defaults(func=_main)


def _kafka_load(testbed: Any) -> dict[str, dict[str, int]]:
    """Topics and partitions on each test-bed cluster (internal topics excluded), before the runs."""
    from ingestd.kafka import make_admin

    load: dict[str, dict[str, int]] = {}
    for cluster, connection in (("central", testbed.central), ("local", testbed.local)):
        try:
            topics = make_admin(connection).list_topics(timeout=10).topics
        except Exception:  # only a figure for the report: the run itself will say what is wrong
            continue
        mine = {name: meta for name, meta in topics.items() if not name.startswith("__")}
        load[cluster] = {
            "topics": len(mine),
            "partitions": sum(len(meta.partitions) for meta in mine.values()),
        }
    return load


def _machine() -> dict[str, Any]:
    def first_line(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    return {
        "nproc": os.cpu_count(),
        "cpu": first_line("/proc/cpuinfo", "model name"),
        "memory_total": first_line("/proc/meminfo", "MemTotal"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _main(args: argparse.Namespace) -> int:
    from ingestd.e2e import ChainError, FeedError, ReconciliationError, ServiceError, TestBed
    from ingestd.log import LoggingSettings, configure_logging

    configure_logging(LoggingSettings(level="WARNING"), service="ingestd-bench")
    if any(n < 1 for n in args.events):
        print("bench e2e: --events must be positive", file=sys.stderr)
        return 2
    if args.daemons < 1:
        print("bench e2e: --daemons must be at least 1", file=sys.stderr)
        return 2
    try:
        testbed = TestBed.from_environment()
    except ChainError as error:
        print(f"bench e2e: {error}", file=sys.stderr)
        return 2
    if not args.skip_anchor and testbed.kafka_lib is None:
        print("bench e2e: the anchor needs INGESTD_TESTBED_KAFKA_LIB (or --skip-anchor)", file=sys.stderr)
        return 2
    machine_before = {**_machine(), "kafka_before": _kafka_load(testbed), "host_speed": host_speed()}
    crowded = [
        f"{cluster}: {load['partitions']:,} partitions in {load['topics']:,} topics"
        for cluster, load in machine_before["kafka_before"].items()
        if load["partitions"] > CROWDED_PARTITIONS
    ]
    if crowded:
        _progress(
            "warning: the test bed's brokers hold many other topics ("
            + "; ".join(crowded)
            + "), which costs every service CPU (2,400 leftover test topics slowed a 1M drain by 13 %): "
            "delete them for figures comparable with docs/PERFORMANCE.md"
        )
    results: list[E2EResult] = []
    for events in args.events:
        workdir = (
            args.workdir / f"n{events}" if args.workdir else Path(tempfile.mkdtemp(prefix="ingestd-e2e-"))
        )
        try:
            results.append(
                run_e2e(
                    testbed,
                    workdir,
                    events=events,
                    rate=args.rate,
                    anchor_events=None if args.skip_anchor else args.anchor_events,
                    verify=args.verify,
                    daemon_batch=args.daemon_batch,
                    daemons=args.daemons,
                    publisher_batch=args.publisher_batch,
                    daemon_wait_s=args.daemon_wait,
                    mirror_wait_ms=args.mirror_wait_ms,
                    zip_share=args.zip_share,
                    dim_share=args.dim_share,
                    seed=args.seed,
                    timeout_s=args.timeout,
                    keep=args.keep,
                )
            )
        except (ChainError, FeedError, ServiceError, ReconciliationError) as error:
            print(f"bench e2e: N={events}: {error}", file=sys.stderr)
            return 1
        finally:
            if not args.keep and args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    document = _document(results, machine_before)
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    else:
        _print_table(document)
    return 0 if all(not r.reconciliation.get("problems") for r in results) else 1


def _document(results: list[E2EResult], machine_before: dict[str, Any]) -> dict[str, Any]:
    rates = [r.events_per_s for r in results]
    spread = (max(rates) - min(rates)) / max(rates) if len(rates) > 1 and max(rates) > 0 else None
    growth: dict[str, float] = {}
    if len(results) > 1:
        for name in results[0].services:
            if all(name in r.services for r in results):
                growth[name] = round(
                    results[-1].services[name].peak_rss_mb - results[0].services[name].peak_rss_mb, 1
                )
    p99s = [
        (r.latency_opensearch or {}).get("p99_s") or r.latency_registry.get("p99_s")
        for r in results
        if r.mode == "rate" and r.rate_requested is not None and r.rate_requested >= TARGET_P99_RATE
    ]
    return {
        "benchmark": "e2e",
        "runs": [asdict(r) for r in results],
        "rate_spread": round(spread, 3) if spread is not None else None,
        "peak_rss_growth_mb": growth,
        "targets": {
            "events_per_s": f">= {TARGET_EVENTS_PER_S:,.0f} sustained (drain mode)",
            "p99_latency": f"< {TARGET_P99_S} s at {TARGET_P99_RATE:,.0f} events/s (--rate 1000)",
            "rate_spread": f"<= {TARGET_RATE_SPREAD:.0%} from 10k to 1M events",
            "memory": "flat: peak RSS of each service independent of N",
        },
        "meets": {
            "events_per_s": all(r.events_per_s >= TARGET_EVENTS_PER_S for r in results if r.mode == "drain")
            if any(r.mode == "drain" for r in results)
            else None,
            "p99_latency": all(p is not None and p < TARGET_P99_S for p in p99s) if p99s else None,
            "rate_spread": spread <= TARGET_RATE_SPREAD if spread is not None else None,
            "zero_lost_zero_duplicated": all(not r.reconciliation.get("problems") for r in results),
        },
        "machine": {
            **machine_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "host_speed_after": host_speed(),
        },
    }


def _print_table(document: dict[str, Any]) -> None:
    print("end-to-end benchmark (Rucio -> publisher -> Kafka -> mirror -> Kafka -> daemon -> registry)")
    machine = document["machine"]
    print(
        f"  machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_total']}, "
        f"load {machine['load_average']}; host speed before {machine['host_speed']}, "
        f"after {machine['host_speed_after']} (lower is faster)"
    )
    for run in document["runs"]:
        latency = run["latency_opensearch"] or run["latency_registry"]
        print(
            f"  N={run['events']:>9,} {run['mode']:5} {run['tuning']['daemon_replicas']} daemon(s) "
            f"{run['events_per_s']:>9,.0f} events/s "
            f"({run['datasets_per_s']:,.0f} datasets/s; steady {run['steady_datasets_per_s'] or 0:,.0f}) "
            f"p50 {latency.get('p50_s')} s p99 {latency.get('p99_s')} s; "
            f"lost {run['reconciliation']['lost']}, "
            f"duplicated {run['reconciliation']['duplicated']}"
        )
        if run.get("host_speed"):
            speed = run["host_speed"]
            print(
                f"      host speed   Python loop {speed['python_loop_ms']} ms median "
                f"({speed['fastest_ms']}-{speed['slowest_ms']}, lower is faster)"
            )
        for name, figures in run["services"].items():
            print(f"      {name:13} peak {figures['peak_rss_mb']:>7.1f} MiB  cpu {figures['cpu_s']:>7.1f} s")
        servers = ", ".join(f"{name} {cpu:.1f}" for name, cpu in run["servers_cpu_s"].items())
        print(
            f"      servers' cpu s while clocked: {servers}; whole chain {run['cpu_ms_per_event']} ms "
            f"of CPU per event: at most {run['cpu_bound_events_per_s']} events/s on this machine's cores"
        )
        if run["anchor"]:
            anchor = run["anchor"]
            print(
                f"      anchor: {anchor['events_per_s']} events/s over "
                f"{sum(anchor['ingested_events'].values())} "
                f"events; ratio ours/anchor {run['ratio_events_per_s']} "
                f"(steady datasets/s {run['ratio_steady_datasets_per_s']})"
            )
    print(f"  rate spread {document['rate_spread']}, peak memory growth {document['peak_rss_growth_mb']}")
    print(f"  meets: {document['meets']}")


def run_e2e(
    testbed: Any,
    workdir: Path,
    *,
    events: int,
    rate: float | None = None,
    anchor_events: int | None = 20_000,
    verify: bool = False,
    daemon_batch: int = 2000,
    daemons: int = 1,
    publisher_batch: int = 1000,
    daemon_wait_s: float = 0.2,
    mirror_wait_ms: int = 50,
    zip_share: float = 0.02,
    dim_share: float = 0.01,
    seed: int = 20250601,
    timeout_s: float = 7200.0,
    keep: bool = False,
    log_level: str = "WARNING",
) -> E2EResult:
    """One end-to-end run of ``events`` events; see the module docstring.

    Raises
    ------
    ChainError, FeedError, ServiceError
        The chain could not run or did not finish in ``timeout_s``.
    """
    from ingestd.e2e import Campaign, Chain, EventMix, Ledger, MemorySampler, Tuning, chunked, iter_events
    from ingestd.e2e._anchor_path import run_anchor_path

    tuning = Tuning(
        # Rate mode measures latency, so the publisher polls every 50 ms; a drain never waits on
        # an empty table until its end, and there the shipped default (1 s) is what operators run.
        publisher_poll_interval_s=0.05 if rate is not None else DRAIN_PUBLISHER_POLL_S,
        publisher_batch_size=publisher_batch,
        daemon_batch_events=daemon_batch,
        daemon_batch_wait_s=daemon_wait_s,
        daemon_replicas=daemons,
        mirror_batch_max_wait_ms=mirror_wait_ms,
        verify_files=verify,
        log_level=log_level,
    )
    notes: list[str] = []
    with Chain(testbed, workdir, tuning=tuning, keep=keep) as chain:
        campaign = Campaign(
            storage=chain.storage,
            events=events,
            mix=EventMix(zip_share=zip_share, dim_share=dim_share),
            seed=seed,
            tag=chain.run_id,
            write_data_files=verify or anchor_events is not None,
        )
        _progress(f"N={events:,}: preparing run {chain.run_id} in {workdir}")
        chain.prepare(campaign)
        ledger = Ledger(workdir / "ledger.tsv", chain.site_map)
        services = [chain.services[name] for name in chain.service_names]
        mode = "rate" if rate else "drain"
        with MemorySampler(services), ledger, HostSpeedProbe() as probe:
            feeder = chain.feeder()
            began_feed = time.monotonic()
            if mode == "drain":
                chain.start(["mirror", "daemon"])
                for chunk in chunked(iter_events(campaign, ledger), 2000):
                    feeder.send(chunk)
                    if ledger.events % 50_000 < 2000:
                        _progress(f"N={events:,}: {ledger.events:,} events written to Rucio")
                stats = feeder.close()
                generation_s = time.monotonic() - began_feed
                chain.vacuum_rucio_messages()
                notes.append("drain mode: Rucio's messages table vacuumed after the fill, before the clock")
                _progress(
                    f"N={events:,}: table filled ({stats.rows_per_s:,.0f} rows/s) and vacuumed; "
                    "starting the publisher"
                )
                chain.start(["publisher"])
                clock_start = time.monotonic()
                servers_before = _servers_cpu()
            else:
                assert rate is not None
                chain.start()
                feeder.wait_ready()
                clock_start = time.monotonic()
                servers_before = _servers_cpu()
                _feed_at_rate(feeder, iter_events(campaign, ledger), rate, events)
                stats = feeder.close()
                generation_s = time.monotonic() - began_feed
                if stats.rows_per_s < 0.9 * rate:
                    notes.append(
                        f"Rucio inserts reached only {stats.rows_per_s:,.0f} of {rate:,.0f} events/s"
                    )
            last = [time.monotonic()]

            def report(progress: Any) -> None:
                if time.monotonic() - last[0] > 5:
                    last[0] = time.monotonic()
                    _progress(
                        f"N={events:,}: {progress.datasets:,} of {ledger.datasets:,} datasets registered"
                    )

            chain.wait_for_registry(
                datasets=ledger.datasets,
                dimension_files=ledger.dimension_files,
                timeout_s=timeout_s,
                on_progress=report,
                events=ledger.facility_events,
            )
            done = time.monotonic()
            done_wall = time.time()
            servers_after = _servers_cpu()
            for service in services:
                service.sample()
        elapsed = done - clock_start
        _progress(f"N={events:,}: all registered after {elapsed:.1f} s; stopping and reconciling")
        prometheus = _prometheus_registered(chain, ledger.facility_events)
        by_daemon = {name: int(count) for name, count in chain.registered_by_daemon().items()}
        stages = _stage_means(chain)
        exit_codes = chain.stop()
        report_ = chain.reconcile(ledger)
        latency_registry = chain.registry_latency()
        latency_opensearch = chain.opensearch_latency()
        steady = chain.registry_rate()
        anchor: dict[str, Any] | None = None
        ratio = ratio_steady = None
        if mode == "drain" and report_.first_central_record_ms:
            # The publisher may publish before its /readyz is seen: count from its first record if earlier.
            elapsed = max(elapsed, done_wall - report_.first_central_record_ms / 1000)
        events_per_s = events / elapsed
        servers_cpu = {
            name: round(servers_after[name] - servers_before[name], 2)
            for name in servers_after
            if name in servers_before
        }
        total_cpu_s = sum(s.cpu_s for s in services) + sum(servers_cpu.values())
        cpu_ms_per_event = 1000 * total_cpu_s / events
        cpu_bound = (os.cpu_count() or 1) * 1000 / cpu_ms_per_event if cpu_ms_per_event else None
        if anchor_events is not None:
            _progress(
                f"N={events:,}: anchor path (MirrorMaker 2 + ctrl_ingestd-equivalent), "
                f"up to {anchor_events:,} events"
            )
            offered = min(anchor_events, ledger.facility_events)
            result = run_anchor_path(
                chain,
                workdir / "bootstrap-dimensions.yaml",
                max_events=offered,
                mirrored_records=ledger.facility_events,
                timeout_s=timeout_s,
                progress=_progress,
            )
            anchor = asdict(result)
            if result.events_per_s:
                ratio = round(events_per_s / result.events_per_s, 2)
            if result.steady_datasets_per_s and steady:
                ratio_steady = round(steady / result.steady_datasets_per_s, 2)
            if offered < ledger.facility_events:
                notes.append(
                    f"anchor capped at {offered:,} of {ledger.facility_events:,} facility events "
                    "(rates are compared)"
                )
        if mode == "drain":
            notes.append(
                "drain mode: Rucio's table was filled first; the clock starts when the publisher is ready "
                "(or at its first record, if earlier)"
            )
        if not verify:
            notes.append("file verification off in the daemon (--verify turns it on)")
        return E2EResult(
            events=events,
            mode=mode,
            rate_requested=rate,
            facility_events=ledger.facility_events,
            datasets=ledger.datasets,
            dimension_files=ledger.dimension_files,
            by_facility_and_kind=dict(ledger.summary()["by_facility_and_kind"]),  # type: ignore[call-overload]
            generation_and_rucio_s=round(generation_s, 1),
            rucio_rows_per_s=round(stats.rows_per_s, 1),
            elapsed_s=round(elapsed, 2),
            events_per_s=round(events_per_s, 1),
            datasets_per_s=round(ledger.datasets / elapsed, 1),
            steady_datasets_per_s=round(steady, 1) if steady else None,
            latency_opensearch=latency_opensearch,
            latency_registry=latency_registry,
            services={
                s.name: ServiceFigures(
                    round(s.peak_rss_bytes / 2**20, 1), round(s.cpu_s, 2), s.memory_profile()
                )
                for s in services
            },
            reconciliation=report_.as_dict(),
            exit_codes=exit_codes,
            prometheus_registered_events=prometheus,
            registered_by_daemon=by_daemon,
            stage_mean_s=stages,
            anchor=anchor,
            ratio_events_per_s=ratio,
            ratio_steady_datasets_per_s=ratio_steady,
            tuning=tuning.as_dict(),
            run_id=chain.run_id,
            notes=notes,
            servers_cpu_s=servers_cpu,
            cpu_ms_per_event=round(cpu_ms_per_event, 3),
            cpu_bound_events_per_s=round(cpu_bound, 1) if cpu_bound else None,
            host_speed=probe.summary(),
        )


def _servers_cpu() -> dict[str, float]:
    """CPU seconds so far of each running test-bed server (brokers, PostgreSQL, OpenSearch, Prometheus).

    Read on the shared test bed, so anything else using it meanwhile counts too: run the
    benchmark on a quiet machine.
    """
    from deploy.local import TestBed
    from deploy.local._base import process_tree_cpu_s

    figures: dict[str, float] = {}
    for server in TestBed().servers:
        pid = server.pid()
        if pid is not None:
            figures[server.name] = process_tree_cpu_s(pid)
    return figures


def _feed_at_rate(feeder: Any, events: Any, rate: float, total: int) -> None:
    """Send events to the Rucio feeder at ``rate`` per second, in 50 ms ticks."""
    from ingestd.e2e import chunked

    per_tick = max(1, round(rate * 0.05))
    began = time.monotonic()
    sent = 0
    last_report = began
    for chunk in chunked(events, per_tick):
        due = began + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        feeder.send(chunk)
        sent += len(chunk)
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            _progress(f"{sent:,} of {total:,} events inserted at {sent / (time.monotonic() - began):,.0f}/s")


def _stage_means(chain: Any) -> dict[str, float]:
    """Mean duration of each daemon stage (per batch, all replicas) and the mirror's replication latency."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = [
        *((name, "daemon", "ingestd_stage_duration_seconds", "stage") for name in chain.daemons),
        ("mirror", "mirror", "ingestd_mirror_replication_latency_seconds", None),
    ]
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for service, prefix, metric, label in wanted:
        try:
            text = chain.services[service].metrics_text()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name != metric:
                continue
            for sample in family.samples:
                key = f"{prefix}.{sample.labels.get(label, 'all') if label else 'replication'}"
                if sample.name.endswith("_sum"):
                    sums[key] = sums.get(key, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    counts[key] = counts.get(key, 0.0) + sample.value
    return {key: round(sums[key] / counts[key], 4) for key in sums if counts.get(key)}


def _prometheus_registered(chain: Any, expected: int, wait_s: float = 10.0) -> float | None:
    """``ingestd_events_total{outcome="registered"}`` of the run's daemon, as Prometheus scraped it.

    Waits up to ``wait_s`` for a scrape showing ``expected`` (Prometheus scrapes every second or so).
    """
    query = f'sum(ingestd_events_total{{scrape_job="e2e-{chain.run_id}",outcome="registered"}})'
    deadline = time.monotonic() + wait_s
    value: float | None = None
    while True:
        result = chain.prometheus_query(query)
        if result:
            value = float(result[0]["value"][1])
        if result is None or (value is not None and value >= expected) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)
