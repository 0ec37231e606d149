"""``ingestd site``: check and render a facility's site file; supervise a service under systemd.

``check SITE`` validates the site, loads every service's rendered configuration
through that service's own settings model and renders every target; it lists the
secrets to provision and where each target expects them. ``render SITE --target
systemd|kubernetes|compose|mm2 -o DIR`` writes one target's files. ``show SITE``
prints the merged site (``--origins``: which file set each key). ``--env NAME``
applies ``overlays/NAME.yaml`` from the site file's folder; ``--overlay FILE``
(repeatable) applies further overlays. ``supervise`` is what rendered systemd units
run: the service as a child, ``READY=1`` and watchdog pings from its /healthz.

Exit codes: 0 ok, 1 the check found problems, 2 the site (or a command line) is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["EXIT_INVALID", "EXIT_PROBLEMS", "register"]

EXIT_PROBLEMS = 1
"""``check`` found problems (listed on standard error)."""

EXIT_INVALID = 2
"""The site cannot be read or validated, or it cannot be rendered for the target."""


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", type=Path, metavar="SITE", help="the site file (e.g. deploy/sites/frdf.yaml)")
    parser.add_argument(
        "--env",
        metavar="NAME",
        help="apply the environment overlay overlays/NAME.yaml beside the site file (prod, test, dev)",
    )
    parser.add_argument(
        "--overlay",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="apply a further overlay file (repeatable, applied in order after --env)",
    )


def register(subparsers: Any) -> None:
    """Add the ``site`` sub-command and its actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "site",
        help="check and render a site file (systemd, Kubernetes, docker-compose, MirrorMaker 2)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="site_command", metavar="ACTION", required=True)

    check = actions.add_parser("check", help="validate a site against every service and every target")
    _add_site_arguments(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)

    render = actions.add_parser("render", help="write one target's files for a site")
    _add_site_arguments(render)
    render.add_argument(
        "--target", required=True, choices=["systemd", "kubernetes", "compose", "mm2"], help="what to render"
    )
    render.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="output folder")
    render.set_defaults(func=_render)

    show = actions.add_parser("show", help="print the merged site file")
    _add_site_arguments(show)
    show.add_argument("--origins", action="store_true", help="print which file set each key instead")
    show.set_defaults(func=_show)

    supervise = actions.add_parser(
        "supervise",
        help="run a service with systemd readiness and watchdog from its /healthz (what rendered units run)",
        description=(
            "Under systemd ($NOTIFY_SOCKET set): start COMMAND, send READY=1 once its /healthz answers, "
            "WATCHDOG=1 while it keeps answering, STATUS= from /readyz; forward SIGTERM/SIGINT/SIGHUP; exit "
            "with its status. Without systemd: exec COMMAND unchanged."
        ),
    )
    supervise.add_argument(
        "--health-url",
        default=None,
        metavar="URL",
        help="the service's /healthz URL (default: $INGESTD_SUPERVISE_HEALTH_URL)",
    )
    supervise.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    supervise.set_defaults(func=_supervise)


def _load(args: argparse.Namespace) -> Any:
    from ingestd.site import load_site

    return load_site(args.site, environment=args.env, overlays=args.overlay)


def _check(args: argparse.Namespace) -> int:
    from ingestd.site import SiteError, check_site

    try:
        loaded = _load(args)
    except SiteError as error:
        print(f"ingestd site check: {error}", file=sys.stderr)
        return EXIT_INVALID
    report = check_site(loaded)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"site {report.site} from {' < '.join(report.files)}")
        for service, port in report.services.items():
            print(f"  service {service:9} port {port}")
        for target, count in report.rendered.items():
            print(f"  target {target:10} {count} files")
        for name, places in report.secrets.items():
            print(f"  secret {name}: {places['description']}")
            for where in ("systemd", "kubernetes", "compose"):
                print(f"    {where:10} {places[where]}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.ok and not args.json:
        print("ok")
    return 0 if report.ok else EXIT_PROBLEMS


def _render(args: argparse.Namespace) -> int:
    from ingestd.site import SiteError, Target, render

    try:
        loaded = _load(args)
        rendering = render(loaded, Target(args.target))
    except SiteError as error:
        print(f"ingestd site render: {error}", file=sys.stderr)
        return EXIT_INVALID
    output: Path = args.output
    before = _earlier_renderings(output)
    written = rendering.write(output)
    for path in written:
        print(path)
    stale = sorted(before - set(written))
    if stale:
        print(
            "ingestd site render: files of an earlier rendering remain in the output folder "
            "(remove them if their service or target is gone):",
            file=sys.stderr,
        )
        for path in stale:
            print(f"  {path}", file=sys.stderr)
    return 0


def _earlier_renderings(folder: Path) -> set[Path]:
    """Files below ``folder`` that a rendering wrote (they carry its header in their first lines).

    Hidden folders (``.git``, ``.venv``) are not searched.
    """
    from ingestd.site._output import GENERATED_MARK

    found: set[Path] = set()
    if not folder.is_dir():
        return found
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            path = Path(root) / name
            try:
                with path.open(encoding="utf-8") as stream:
                    head = stream.read(512)
            except (OSError, UnicodeDecodeError):
                continue
            if GENERATED_MARK in head:
                found.add(path)
    return found


def _show(args: argparse.Namespace) -> int:
    from ingestd.site import SiteError
    from ingestd.site._layers import Origin, display_path
    from ingestd.site._output import dump_yaml

    try:
        loaded = _load(args)
    except SiteError as error:
        print(f"ingestd site show: {error}", file=sys.stderr)
        return EXIT_INVALID
    if not args.origins:
        sys.stdout.write(f"# {loaded.provenance}\n" + dump_yaml(loaded.layers.data))
        return 0

    def walk(node: Origin, path: str) -> None:
        children = node.children
        if isinstance(children, dict) and children:
            for key, child in children.items():
                walk(child, f"{path}.{key}" if path else key)
        elif isinstance(children, list) and children:
            for index, child in enumerate(children):
                walk(child, f"{path}.{index}")
        else:
            print(f"{path}: {display_path(node.file)}")

    walk(loaded.layers.origin, "")
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from ingestd.log import LoggingSettings, configure_logging
    from ingestd.site import HEALTH_URL_VARIABLE, supervise

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    health_url = args.health_url or os.environ.get(HEALTH_URL_VARIABLE)
    if not command or not health_url:
        print(
            f"ingestd site supervise: give --health-url (or {HEALTH_URL_VARIABLE}) and the command after --",
            file=sys.stderr,
        )
        return EXIT_INVALID
    configure_logging(LoggingSettings(), service="ingestd-supervise")
    return supervise(command, health_url, hidden_variables=[HEALTH_URL_VARIABLE])
