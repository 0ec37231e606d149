"""``ingestd publish``: Rucio events to Kafka topics by destination facility.

Reads Rucio's ``messages`` table (default) or, with ``--route``, one raw Hermes
topic, and publishes every event to its facility's topic. Settings come from the
environment (``INGESTD_PUBLISHER_...``) and, optionally, a YAML file
(``--config``); the environment wins. See :mod:`publisher` for what is guaranteed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = ["explain", "register", "run"]

EXIT_CONFIGURATION = 2


def register(subparsers: Any) -> None:
    """Add the ``publish`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        help="publish Rucio transfer events to Kafka topics by destination facility",
        description=(
            "Publish Rucio events (transfer-done by default) to Kafka topics chosen by the site map. "
            "A row leaves Rucio's messages table only after Kafka confirmed its record. "
            "Settings: environment variables INGESTD_PUBLISHER_* (nested with __) and --config."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file with the publisher settings; environment variables override its values",
    )
    parser.add_argument(
        "--route",
        action="store_true",
        help="route mode: fan out one raw Hermes topic (route.source_topic) instead of reading the table",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="exit once nothing is left to publish (one-shot runs, back-fills)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, print them with secrets hidden, and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, then run the publisher; returns the exit code."""
    from ingestd.log import LoggingSettings, configure_logging
    from publisher import PublisherMode, load_publisher_settings, run_publisher

    try:
        configure_logging(LoggingSettings(), service="publisher")
        settings = load_publisher_settings(args.config)
    except ValidationError as error:
        print(f"ingestd publish: invalid settings:\n{explain(error)}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except FileNotFoundError as error:
        print(f"ingestd publish: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION
    if args.check_config:
        print(settings.model_dump_json(indent=2))
        return 0
    mode = PublisherMode.route if args.route else PublisherMode.table
    return run_publisher(settings, mode=mode, drain=args.drain)


def explain(error: ValidationError) -> str:
    """One line per invalid field, naming the environment variable (or file key) that sets it."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        variable = "INGESTD_PUBLISHER_" + "__".join(location).upper() if location else "INGESTD_PUBLISHER_*"
        key = ".".join(location) or "(settings)"
        if problem["type"] == "missing" and location in (["kafka"], ["database"], ["route"]):
            variable += "__<FIELD>"  # a whole section is missing: its fields are set one by one
        lines.append(f"  {key}: {problem['msg']} (set {variable}, or {key} in --config)")
    return "\n".join(lines)
