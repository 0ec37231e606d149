"""``ingestd pending``: the events parked in the registry database, grouped by the records they wait for.

A data product whose ``dim_file`` has not arrived yet is parked until its records
come (see :mod:`ingestd.engine._pending`). This command answers an operator's
questions about that wait: which records are awaited, by how many events, since
when — e.g. ``visit:HSC/330  1000 events  oldest 2.1 h``. ``--events`` lists the
events themselves; ``--redrive`` makes every parked event due now, so the running
daemons re-drive them within their poll interval (after a fix outside ingestd, such
as records imported by hand).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from butler_registry._pending import PendingEvent

__all__ = ["register", "run_pending"]


def register(subparsers: Any) -> None:
    """Add ``pending``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pending",
        help="list events parked for missing dimension records, grouped by what they wait for",
        description=(
            "List the events parked in the registry database, grouped by the dimension record they wait "
            "for (an event waiting for several records appears in each group), with counts and ages. "
            "Events parked because their file is not visible yet wait in the retry topic instead: "
            "see `ingestd dlq list --retry`."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML settings")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N groups or events")
    parser.add_argument("--json", action="store_true", help="one JSON object per group (or event)")
    parser.add_argument("--events", action="store_true", help="list the events, longest-waiting first")
    parser.add_argument(
        "--redrive",
        action="store_true",
        help="make every parked event due now: the running daemons re-drive them within their poll interval",
    )
    parser.set_defaults(func=run_pending)


def run_pending(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ingestd pending``."""
    from butler_registry import SqlRegistry
    from butler_registry._pending import PendingStore
    from butler_registry.interface import RegistryError
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command
    from ingestd.engine._assembly import open_registry

    out = out or sys.stdout
    if args.limit is not None and args.limit < 1:
        print("ingestd pending: --limit must be at least 1", file=sys.stderr)
        return int(ExitCode.config)
    try:
        settings = load_for_command(args.config)
        registry = open_registry(settings, create=False)
    except ConfigurationError as error:
        print(f"ingestd pending: {error}", file=sys.stderr)
        return int(ExitCode.config)
    except RegistryError as error:
        print(f"ingestd pending: {type(error).__name__}: {error}", file=sys.stderr)
        return int(ExitCode.failure)
    try:
        if not isinstance(registry, SqlRegistry):
            print(
                "ingestd pending: this registry keeps no parked events (the real Butler); parked events "
                "wait in the retry topic: `ingestd dlq list --retry`",
                file=sys.stderr,
            )
            return int(ExitCode.config)
        store = PendingStore(registry.engine)
        now = datetime.now(UTC)
        if args.redrive:
            count = store.make_due(now=now)
            out.write(
                json.dumps({"made_due": count}) + "\n" if args.json else f"{count} parked events made due\n"
            )
            return int(ExitCode.ok)
        if args.events:
            for event in store.events(args.limit):
                out.write(_format_event(event, now, as_json=args.json) + "\n")
            return int(ExitCode.ok)
        summary = store.summary()
        for group in store.groups(args.limit):
            if args.json:
                entry = {
                    "wait": group.wait,
                    "events": group.events,
                    "oldest_age_s": round((now - group.oldest).total_seconds(), 1),
                    "newest_age_s": round((now - group.newest).total_seconds(), 1),
                    "oldest": group.oldest.isoformat(),
                }
                out.write(json.dumps(entry) + "\n")
            else:
                out.write(
                    f"{group.wait:40}  {group.events:8} events  oldest {_age(now, group.oldest):>8}"
                    f"  newest {_age(now, group.newest):>8}\n"
                )
        if not args.json:
            oldest = f", oldest {_age(now, summary.oldest)}" if summary.oldest is not None else ""
            print(f"{summary.events} events parked{oldest}", file=sys.stderr)
        return int(ExitCode.ok)
    except RegistryError as error:
        print(f"ingestd pending: {type(error).__name__}: {error}", file=sys.stderr)
        return int(ExitCode.failure)
    finally:
        registry.close()


def _age(now: datetime, then: datetime) -> str:
    seconds = max((now - then).total_seconds(), 0.0)
    if seconds >= 7_200:
        return f"{seconds / 3_600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _format_event(event: PendingEvent, now: datetime, *, as_json: bool) -> str:
    where = (
        f"{event.topic}[{event.partition}]@{event.offset}"
        if event.topic is not None
        else f"{event.source}:{event.line}"
    )
    waits = [str(wait) for wait in event.waits]
    if as_json:
        return json.dumps(
            {
                "key": event.key,
                "origin": where,
                "waits": waits,
                "error_class": event.error_class,
                "reason": event.reason,
                "attempts": event.attempts,
                "first_parked_at": event.first_parked_at.isoformat(),
                "next_attempt_at": event.next_attempt_at.isoformat(),
            }
        )
    return (
        f"{event.key}  from {where}  parked {_age(now, event.first_parked_at)} ago  attempts={event.attempts}"
        f"\n    waits for {', '.join(waits) or '(timer only)'}"
    )
