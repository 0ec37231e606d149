"""``ingestd bench backfill``: replicas/s backfilled from a real Rucio server, and the memory it takes.

Sets up, on the PostgreSQL server given (the test bed's by default):

* a Rucio database bootstrapped by Rucio's own tools (``rucio[postgresql]`` in its
  own virtualenv, :mod:`deploy.local.rucio_env`), an RSE with a ``root://``
  protocol, a scope, and ``--replicas`` files registered at the RSE by Rucio's
  ``add_replicas`` with ``rubin_butler``/``rubin_sidecar`` metadata (HSC calexps of
  visit 328, whose dimension records ship with ingestd's samples);
* Rucio's real REST API on 127.0.0.1 (Werkzeug, threaded);
* an empty registry database with those dimension records.

Then runs ``ingestd replay --from-rucio`` as a separate process, exactly as an
operator would, and reports its wall time, replicas/s and peak resident memory
(the kernel's high-water mark, ``VmHWM``, of that process alone). Memory should not grow with
the number of replicas: run it at two sizes to see (the listing and checkpoint
live in a SQLite file, chunks of ``--chunk-size`` names are in memory at a time).

Prints one JSON document. Targets are stated in it, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from ingestd.bench._sidecars import HSC_DETECTORS, hsc_calexp_sidecar

__all__ = ["register", "run"]

TARGET_REPLICAS_PER_S = 1_000
"""Backfill rate to sustain on a 2-core machine shared with the Rucio server and PostgreSQL.

At that rate a million files (a large facility after a long outage) take under 20
minutes; the REST server's per-DID metadata lookups are most of the cost.
"""
TARGET_PEAK_RSS_MB = 300
"""Peak memory of the backfill process, whatever the number of replicas."""

_RSE = "BENCH_BUTLER_DISK"
_SCOPE = "bench_backfill"
_PREFIX = "root://xrd.bench:1094//rucio/"


def register(subparsers: Any) -> None:
    """Add ``bench backfill``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "backfill",
        help="replicas/s backfilled from a real Rucio REST server, and peak memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--replicas", type=int, default=10_000, help="files at the RSE (default 10000)")
    parser.add_argument("--chunk-size", type=int, default=500, help="DIDs per catalogue request")
    parser.add_argument("--batch", type=int, default=2_000, help="events per registry transaction")
    parser.add_argument(
        "--parallel", type=int, default=4, help="chunks asked about at once (rucio.parallel_requests)"
    )

    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("INGESTD_TEST_POSTGRES_URL"),
        help="superuser URL of the PostgreSQL server (default: $INGESTD_TEST_POSTGRES_URL)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON only (the default output is JSON too)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the registry database and the scratch folder (the Rucio copy is always dropped)",
    )
    parser.set_defaults(func=run)


def _files(count: int) -> list[dict[str, Any]]:
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"ingestd-bench-backfill-{count}")
    files = []
    for index in range(count):
        dataset_id = uuid.uuid5(namespace, str(index))
        run = f"bench/backfill/run{index // HSC_DETECTORS:05d}"
        sidecar = hsc_calexp_sidecar(dataset_id, index % HSC_DETECTORS, run, visit=328)
        files.append(
            {
                "scope": _SCOPE,
                "name": f"bench/calexp_{index:08d}.fits",
                "bytes": 4_000_000 + index,
                "adler32": f"{(index * 2_654_435_761) & 0xFFFFFFFF:08x}",
                "meta": {
                    "rubin_butler": "data_product",
                    "rubin_sidecar": sidecar,
                },
            }
        )
    return files


def _backfill(command: list[str], env: dict[str, str]) -> tuple[int, float, float, float, str, str]:
    """Run the backfill; return (exit code, wall seconds, peak RSS MB, CPU seconds, stdout, stderr).

    The peak is the child's own ``VmHWM``, read every 0.1 s until it exits. ``wait4``'s
    ``ru_maxrss`` cannot be used: Linux carries the forking parent's resident set into
    the child's maximum at ``exec``, so it reported this benchmark's own memory (which
    holds the N generated files) rather than the backfill's, and grew with N.
    """
    from ingestd.e2e import read_usage

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = os.times()
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        peak_bytes = 0
        try:
            while process.poll() is None:
                usage = read_usage(process.pid)
                if usage is not None:
                    peak_bytes = max(peak_bytes, usage.peak_rss_bytes)
                time.sleep(0.1)
        except BaseException:  # interrupted: never leave the backfill running
            process.kill()
            process.wait()
            raise
        elapsed = time.monotonic() - started
        after = os.times()
        out.seek(0)
        err.seek(0)
        rss_mb = peak_bytes / 1_048_576
        # Children's CPU counts only once waited for: the difference is this child's alone.
        cpu_s = after.children_user - before.children_user + after.children_system - before.children_system
        return process.returncode, elapsed, rss_mb, cpu_s, out.read().decode(), err.read().decode()


def run(args: argparse.Namespace) -> int:
    """Set up Rucio, run one backfill as an operator would, print the figures."""
    from butler_registry import open_registry

    try:
        from deploy.local.rucio_env import PostgresAdmin
    except ImportError:  # deploy/ ships with the source tree, not with the package
        print(
            "bench backfill: needs the source checkout's deploy/ package (Rucio's virtualenv): run it "
            "from the repository root as `python -m ingestd bench backfill`",
            file=sys.stderr,
        )
        return 2
    if not args.postgres_url:
        print("bench backfill: give --postgres-url (or the test-bed env)", file=sys.stderr)
        return 2
    # SIGTERM (a time limit) unwinds like Ctrl-C, so the scratch databases and the server go away.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, admin=PostgresAdmin.from_url(args.postgres_url), open_registry=open_registry)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args: argparse.Namespace, *, admin: Any, open_registry: Any) -> int:
    import yaml

    from deploy.local import free_port
    from deploy.local.rucio_env import (
        RucioEnv,
        clone_database,
        ensure_rucio_venv,
        ensure_template_database,
        write_rucio_client_config,
        write_rucio_config,
    )
    from ingestd.samples import files_dir

    scratch = Path(tempfile.mkdtemp(prefix="ingestd-bench-backfill-"))
    registry_db = f"ingestd_bench_backfill_{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {"benchmark": "backfill", "replicas": args.replicas}
    try:
        venv = ensure_rucio_venv()
        template = ensure_template_database(admin, venv, scratch / "template")
        with clone_database(admin, template) as rucio_url:
            rucio = RucioEnv(venv, write_rucio_config(scratch / "rucio", rucio_url, venv=venv, pool_size=12))
            rucio.add_rses_and_scopes([_RSE], [_SCOPE])
            rucio.add_rse_protocol(_RSE, scheme="root", hostname="xrd.bench", port=1094, prefix="//rucio/")
            began = time.monotonic()
            rucio.add_replicas_in_chunks(_RSE, _files(args.replicas))
            result["setup_replicas_s"] = round(time.monotonic() - began, 1)
            admin.create(registry_db)
            registry_url = admin.url(registry_db)
            with open_registry(registry_url, create=True) as registry:
                registry.import_dimensions(files_dir() / "dimensions.yaml")
            with rucio.rest_server(free_port()) as server:
                client = write_rucio_client_config(scratch / "client", server)
                config = scratch / "ingestd.yaml"
                config.write_text(
                    yaml.safe_dump(
                        {
                            "site": {
                                "facilities": [
                                    {
                                        "name": "Bench",
                                        "rses": [_RSE],
                                        "prefixes": {
                                            _RSE: {
                                                "rucio_prefix": _PREFIX,
                                                "fs_prefix": str(scratch / "data"),
                                            }
                                        },
                                    }
                                ]
                            },
                            "registry": {"url": registry_url},
                            "dead_letters": {"file": str(scratch / "dead-letters.jsonl")},
                            "batching": {"max_events": args.batch, "max_wait_s": 0.2},
                            "http": {"enabled": False},
                            "logging": {"level": "WARNING", "format": "json"},
                            "rucio": {
                                "chunk_size": args.chunk_size,
                                "max_requests_per_s": 1_000,
                                "parallel_requests": args.parallel,
                            },
                        }
                    )
                )
                command = [
                    sys.executable, "-m", "ingestd", "replay", "--from-rucio", "--rse", _RSE,
                    "--scope", _SCOPE, "--config", str(config), "--state-dir", str(scratch / "state"),
                    "--json", "--no-progress",
                ]  # fmt: skip
                env = {**os.environ, "RUCIO_CONFIG": str(client)}
                code, elapsed, rss_mb, cpu_s, out, err = _backfill(command, env)
        if code != 0:
            print(f"bench backfill: the backfill failed (exit {code}):\n{err[-3000:]}", file=sys.stderr)
            return 1
        summary = json.loads(out.strip().splitlines()[-1])
        rate = args.replicas / elapsed if elapsed > 0 else 0.0
        result.update(
            {
                "seconds": round(elapsed, 2),
                "replicas_per_s": round(rate, 1),
                "engine_events_per_s": summary.get("events_per_s"),
                "peak_rss_mb": round(rss_mb, 1),
                "backfill_cpu_s": round(cpu_s, 2),
                "replicas_per_backfill_cpu_s": round(args.replicas / cpu_s, 1) if cpu_s > 0 else None,
                "rucio_requests": summary.get("rucio_requests"),
                "outcomes": summary.get("outcomes"),
                "stage_s": summary.get("stage_s"),
                "chunk_size": args.chunk_size,
                "batch": args.batch,
                "parallel_requests": args.parallel,
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "targets": {
                    "replicas_per_s": TARGET_REPLICAS_PER_S,
                    "peak_rss_mb": TARGET_PEAK_RSS_MB,
                    "met": rate >= TARGET_REPLICAS_PER_S and rss_mb <= TARGET_PEAK_RSS_MB,
                },
                "note": (
                    "wall time of the whole `ingestd replay --from-rucio` process: start-up, listing, "
                    "list_replicas + get_metadata_bulk per chunk, planning, registry writes. Rucio's REST "
                    "API is served here by one Werkzeug process on the same machine as PostgreSQL; its "
                    "list_replicas costs it a few ms of CPU per file, which bounds the rate: a production "
                    "server's WSGI processes answer parallel_requests chunks at once"
                ),
            }
        )
        print(json.dumps(result, indent=None if args.json else 2))
        return 0
    finally:
        if not args.keep:
            try:
                admin.drop(registry_db)
            except Exception as error:  # cleaning up must not hide the figures or the real error
                print(f"bench backfill: could not drop {registry_db}: {error}", file=sys.stderr)
            shutil.rmtree(scratch, ignore_errors=True)
