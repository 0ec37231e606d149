"""``ingestd dlq list|redrive``: look at dead letters, and feed them back after a fix.

``list`` reads the dead-letter topic (or, with ``--retry``, the parked events)
without consuming anything. ``redrive`` sends dead letters back through the same
engine as ``ingestd run``, with its own consumer group on the dead-letter topic,
from where that group left off to the end the topic had when it started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run_list", "run_redrive"]


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--error-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="only dead letters of this error class (repeatable), e.g. missing_dimensions, conflict",
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="only dead letters that failed at or after TIME (ISO 8601 or 6h)",
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML settings")


def register(subparsers: Any) -> None:
    """Add ``dlq list`` and ``dlq redrive``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dlq", help="list dead-lettered events, or re-drive them through the engine after a fix"
    )
    inner = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    listing = inner.add_parser(
        "list",
        help="print dead letters (reason, error class, original position) without consuming them",
    )
    _filters(listing)
    listing.add_argument("--retry", action="store_true", help="list parked events (the retry topic) instead")
    listing.add_argument(
        "--file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read a dead-letter file written without Kafka",
    )
    listing.add_argument("--limit", type=int, default=None, metavar="N", help="show at most N")
    listing.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    listing.set_defaults(func=run_list)

    redrive = inner.add_parser(
        "redrive",
        help="send dead letters back through the engine (idempotent; its own consumer group)",
        description=(
            "Re-drive dead letters through the engine, from this re-drive group's position to the current "
            "end of the dead-letter topic. Events that fail again are dead-lettered again with one more "
            "attempt. With --error-class the group is <group>.<classes>: each class keeps its own progress."
        ),
    )
    _filters(redrive)
    redrive.add_argument(
        "--group", default=None, help="consumer group (default: <consumer.group_id>.dlq-redrive)"
    )
    progress = redrive.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    redrive.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    redrive.set_defaults(func=run_redrive)


def _load(args: argparse.Namespace) -> tuple[Any, Any] | int:
    from ingestd.config import ConfigurationError
    from ingestd.daemon import DeadLetterFilter, ExitCode, load_for_command, parse_time

    try:
        settings = load_for_command(args.config)
        since = parse_time(args.since) if args.since else None
    except (ConfigurationError, ValueError) as error:
        print(f"ingestd dlq: {error}", file=sys.stderr)
        return int(ExitCode.config)
    return settings, DeadLetterFilter(error_classes=frozenset(args.error_class), since=since)


def run_list(args: argparse.Namespace) -> int:
    """``ingestd dlq list``."""
    from ingestd.daemon import list_dead_letters

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    settings, chosen = loaded
    return list_dead_letters(
        settings,
        chosen=chosen,
        retry_topic=args.retry,
        from_file=args.file,
        limit=args.limit,
        as_json=args.json,
    )


def run_redrive(args: argparse.Namespace) -> int:
    """``ingestd dlq redrive``."""
    from ingestd.daemon import run_redrive as redrive

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    settings, chosen = loaded
    return redrive(
        settings, chosen=chosen, group=args.group, show_progress=args.progress, summary_json=args.json
    )
