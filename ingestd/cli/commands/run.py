"""``ingestd run``: the ingest daemon (Kafka topics -> registry), until SIGTERM/SIGINT.

Settings come from ``--config FILE.yaml`` (this daemon's shape or a ctrl_ingestd
file, unchanged) and ``INGESTD_...`` environment variables, which win. The health
and metrics port serves ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``run`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the ingest daemon: consume transfer events, register datasets, commit offsets",
        description=(
            "Consume Rucio transfer events from Kafka, register each dataset in the registry, dead-letter "
            "what cannot be registered, and commit offsets only after both are durable. Stops cleanly on "
            "SIGTERM/SIGINT (the batch in hand is finished and committed). Exit codes: 0 stopped, "
            "1 fatal error, 2 invalid settings, 3 shutdown bound passed."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML settings (ctrl_ingestd files work unchanged); INGESTD_* environment variables override it",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="write {port, pid} here once the health port is serving (for scripts and tests)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="validate the settings, print them (passwords hidden) and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, run the daemon; returns the exit code."""
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command, run_daemon

    try:
        settings = load_for_command(args.config)
    except ConfigurationError as error:
        print(f"ingestd run: {error}", file=sys.stderr)
        return ExitCode.config
    if args.print_config:
        print(json.dumps(settings.public_dump(), indent=2))
        return ExitCode.ok
    return run_daemon(settings, ready_file=args.ready_file)
