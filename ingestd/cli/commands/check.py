"""``ingestd check``: validate the settings and reach every dependency; say what to fix.

Exit codes: 0 every check passed (warnings allowed), 1 at least one check failed,
2 the settings themselves are invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

_MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def register(subparsers: Any) -> None:
    """Add the ``check`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="validate settings, reach Kafka, the registry and OpenSearch; non-zero exit names the problem",
        description=(
            "Validate the settings, then reach each dependency: Kafka (topics matching the subscription, "
            "their partitions and the group's lag), the dead-letter topics, the registry and its schema, "
            "the URL prefixes, OpenSearch when configured. Nothing is created or changed. Exit codes: 0 ok, "
            "1 a check failed, 2 invalid settings."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML settings")
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="timeout of each network check"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the checks and print them; returns the exit code."""
    from ingestd.config import ConfigurationError
    from ingestd.daemon import ExitCode, load_for_command
    from ingestd.engine._preflight import CheckStatus, run_checks

    try:
        settings = load_for_command(args.config)
    except ConfigurationError as error:
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "checks": [{"name": "config", "status": "fail", "detail": str(error)}]}
                )
            )
        else:
            print(f"FAIL  config: {error}", file=sys.stderr)
        return ExitCode.config
    checks = run_checks(settings, timeout_s=args.timeout)
    failed = [check for check in checks if check.status is CheckStatus.fail]
    if args.json:
        body = {
            "ok": not failed,
            "checks": [
                {
                    "name": check.name,
                    "status": check.status.value,
                    "detail": check.detail,
                    "fix": check.fix,
                    "data": check.data,
                    "seconds": check.seconds,
                }
                for check in checks
            ],
        }
        print(json.dumps(body, indent=2, default=str))
    else:
        source = f"from {args.config}" if args.config else "from the environment and defaults"
        print(f"ok    config: settings valid ({source})")
        for check in checks:
            print(f"{_MARKS[check.status.value]}  {check.name}: {check.detail}")
            if check.fix and check.status in (CheckStatus.fail, CheckStatus.warn):
                print(f"      fix: {check.fix}")
            if check.name == "topics" and check.status is CheckStatus.ok:
                for row in check.data.get("partitions", []):
                    print(
                        f"      {row['topic']}[{row['partition']}] committed={row['committed']} "
                        f"end={row['end']} lag={row['lag']}"
                    )
        print(
            "all checks passed"
            if not failed
            else f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}"
        )
    return ExitCode.failure if failed else ExitCode.ok
