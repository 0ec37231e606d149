"""The ``ingestd`` command line.

Each sub-command lives in its own module under :mod:`ingestd.cli.commands` and
exposes ``register(subparsers)``; commands are discovered, so adding one touches
no shared file. Commands are thin: they parse arguments, load settings,
configure logging and call plain functions that work without the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ingestd import __version__

from . import commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description="Rucio transfer events to a Butler registry, for the Rubin Data Facilities.",
    )
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
