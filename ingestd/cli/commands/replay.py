"""``ingestd replay``: feed past events through the engine (backfills, demos).

From a JSON-lines file (one HermesK message per line), from Kafka topics
between two offsets or times, read without a consumer group so the live daemon
is not disturbed, or from Rucio's catalogue (the replicas at an RSE, for a
facility whose events Kafka no longer holds; see docs/BACKFILL.md). Replaying is
idempotent: what is already registered is reported ``already_present``. With
``--sample`` it replays the bundled sample events into the embedded SQLite
registry, with no server at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``replay`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="replay events from a JSON-lines file or a Kafka range through the engine (idempotent)",
        description=(
            "Replay transfer events through the same engine as `ingestd run`. --from-file reads one "
            "event per line; --from-kafka reads the configured (or given) topics between offsets or "
            "times without a consumer group. Dead letters go to the dead-letter topic, or to "
            "dead_letters.file when no Kafka is configured. A summary is printed at the end."
        ),
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--from-file", type=Path, metavar="FILE", help="JSON-lines file of events ('-' for stdin)"
    )
    where.add_argument("--from-kafka", action="store_true", help="read Kafka topics without a consumer group")
    where.add_argument(
        "--from-rucio",
        action="store_true",
        help="rebuild the events of the replicas at --rse from Rucio's catalogue (resumable backfill)",
    )
    where.add_argument(
        "--sample",
        action="store_true",
        help="replay the bundled sample events with the bundled demo settings (no servers needed)",
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML settings")
    parser.add_argument(
        "--registry-url",
        default=None,
        metavar="URL",
        help="registry to write to (overrides registry.url), e.g. sqlite:///demo.sqlite3",
    )
    parser.add_argument(
        "--resume-marker",
        type=Path,
        default=None,
        metavar="FILE",
        help="--from-file: record the last line done here, and start after it on the next run",
    )
    parser.add_argument(
        "--topics",
        nargs="+",
        default=[],
        metavar="TOPIC",
        help="--from-kafka: topics (default: the configured ones)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--start-offset", type=int, default=None, metavar="N", help="first offset of each partition"
    )
    start.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="first record at or after TIME (ISO 8601 or 6h); --from-rucio: replicas updated since TIME",
    )
    end = parser.add_mutually_exclusive_group()
    end.add_argument(
        "--end-offset", type=int, default=None, metavar="N", help="stop before offset N of each partition"
    )
    end.add_argument(
        "--until", default=None, metavar="TIME", help="stop at the first record at or after TIME"
    )
    rucio = parser.add_argument_group("--from-rucio")
    rucio.add_argument("--rse", default=None, metavar="RSE", help="the RSE whose replicas are backfilled")
    rucio.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        metavar="SCOPE",
        help="list the files of this scope (repeatable; default: every scope)",
    )
    rucio.add_argument(
        "--dataset", default=None, metavar="SCOPE:NAME", help="only the files of this dataset or container"
    )
    rucio.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the listing and checkpoint are kept (default: ~/.local/state/ingestd/backfill)",
    )
    rucio.add_argument(
        "--restart", action="store_true", help="discard an unfinished backfill's state and start afresh"
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=run)


def _bundled_sample() -> tuple[Path, Path]:
    from ingestd.samples import demo_config, events_file

    events, config = events_file(), demo_config()
    if not events.is_file() or not config.is_file():
        raise FileNotFoundError(f"the bundled sample is missing from {events.parent}")
    return events, config


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, run the replay; returns the exit code."""
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command, parse_time, run_replay
    from ingestd.sources import RangeBound

    from_file: Path | None = args.from_file
    config: Path | None = args.config
    if args.sample:
        try:
            from_file, sample_config = _bundled_sample()
        except FileNotFoundError as error:
            print(f"ingestd replay: {error}", file=sys.stderr)
            return ExitCode.failure
        config = config or sample_config
    if args.from_rucio:
        return _run_from_rucio(args)
    if args.rse or args.scopes or args.dataset or args.state_dir or args.restart:
        print(
            "ingestd replay: --rse, --scope, --dataset, --state-dir and --restart need --from-rucio",
            file=sys.stderr,
        )
        return ExitCode.config
    if not args.from_kafka and (
        args.topics
        or args.start_offset is not None
        or args.since
        or args.end_offset is not None
        or args.until
    ):
        print(
            "ingestd replay: --topics, --start-offset, --since, --end-offset and --until need --from-kafka",
            file=sys.stderr,
        )
        return ExitCode.config
    overrides: dict[str, Any] = {}
    if args.registry_url:
        overrides["registry"] = {"url": args.registry_url}
    try:
        settings = load_for_command(config, **overrides)
        start = RangeBound(offset=args.start_offset, time=parse_time(args.since) if args.since else None)
        end = RangeBound(offset=args.end_offset, time=parse_time(args.until) if args.until else None)
    except (ConfigurationError, ValueError) as error:
        print(f"ingestd replay: {error}", file=sys.stderr)
        return ExitCode.config
    return run_replay(
        settings,
        from_file=from_file,
        resume_marker=args.resume_marker,
        topics=args.topics,
        start=start,
        end=end,
        show_progress=args.progress,
        summary_json=args.json,
    )


def _run_from_rucio(args: argparse.Namespace) -> int:
    """``--from-rucio``: the backfill of one RSE from Rucio's catalogue."""
    from ingestd.backfill import BackfillRequest, run_backfill
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command, parse_time

    if args.topics or args.start_offset is not None or args.end_offset is not None or args.until:
        print("ingestd replay: --topics, offsets and --until do not apply to --from-rucio", file=sys.stderr)
        return ExitCode.config
    if args.resume_marker is not None:
        print("ingestd replay: --from-rucio keeps its checkpoint under --state-dir", file=sys.stderr)
        return ExitCode.config
    if not args.rse:
        print("ingestd replay: --from-rucio needs --rse RSE", file=sys.stderr)
        return ExitCode.config
    overrides: dict[str, Any] = {}
    if args.registry_url:
        overrides["registry"] = {"url": args.registry_url}
    try:
        settings = load_for_command(args.config, **overrides)
        request = BackfillRequest(
            rse=args.rse,
            scopes=tuple(args.scopes),
            dataset=args.dataset,
            since=parse_time(args.since) if args.since else None,
        )
    except (ConfigurationError, ValueError) as error:
        print(f"ingestd replay: {error}", file=sys.stderr)
        return ExitCode.config
    return run_backfill(
        settings,
        settings.rucio,
        request,
        state_dir=args.state_dir,
        restart=args.restart,
        show_progress=args.progress,
        summary_json=args.json,
    )
