"""``ingestd mirror``: copy a facility's topics from the central Kafka to the local Kafka, exactly once.

Settings come from ``--config FILE`` (YAML) and ``INGESTD_MIRROR_*`` variables
(which win). ``--check`` validates them and prints the effective settings
(secrets masked); ``--render-mm2 DIR`` writes the equivalent MirrorMaker 2
configuration (``mm2.properties`` and a Strimzi ``KafkaMirrorMaker2``) instead
of running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["EXIT_CONFIG", "register", "run"]

EXIT_CONFIG = 2
"""The settings are invalid; the message on standard error names the fields."""


def register(subparsers: Any) -> None:
    """Add the ``mirror`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mirror",
        help="replicate this facility's topics from the central Kafka to the local one (exactly once)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file (keys of MirrorSettings); INGESTD_MIRROR_* variables override it",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--check",
        action="store_true",
        help="validate the settings, print them as JSON (secrets masked), exit",
    )
    action.add_argument(
        "--render-mm2",
        type=Path,
        metavar="DIR",
        help="write the equivalent MirrorMaker 2 configuration into DIR and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, then check, render or mirror; return the exit code."""
    from pydantic import ValidationError

    from ingestd.log import LoggingSettings, configure_logging
    from mirror import MirrorConfigError, MirrorService, load_mirror_settings
    from mirror.mm2 import write_mm2_files

    try:
        configure_logging(LoggingSettings(), service="ingestd-mirror")
        settings = load_mirror_settings(args.config)
    except (ValidationError, MirrorConfigError) as error:
        print(f"ingestd mirror: invalid settings: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
        return 0
    if args.render_mm2 is not None:
        try:
            written = write_mm2_files(settings, args.render_mm2)
        except MirrorConfigError as error:
            print(f"ingestd mirror: cannot render MirrorMaker 2 configuration: {error}", file=sys.stderr)
            return EXIT_CONFIG
        for path in written:
            print(path)
        return 0
    try:
        service = MirrorService(settings)
    except OSError as error:
        print(
            f"ingestd mirror: cannot serve health and metrics on {settings.http_host}:{settings.http_port}: "
            f"{error} (set http_port)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return service.run()
