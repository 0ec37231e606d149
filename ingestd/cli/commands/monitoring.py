"""``ingestd monitoring ...``: install the OpenSearch index template, check dashboards, docs and rules.

``install`` is what a site runs once per OpenSearch cluster (and after each
upgrade); it is idempotent. ``check`` is what CI runs: dashboards, the metrics
document and the alert rules against the code. ``bench-sink`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from typing import Any

from ingestd.log import configure_logging, get_logger

logger = get_logger(__name__)


def register(subparsers: Any) -> None:
    """Add ``monitoring`` and its sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "monitoring",
        help="OpenSearch index template, dashboards, metrics document and alert rules",
        description=__doc__,
    )
    inner = parser.add_subparsers(dest="monitoring_command", metavar="ACTION", required=True)

    install = inner.add_parser(
        "install",
        help="install or update the OpenSearch index template (idempotent), then check the dashboards",
        description=(
            "Reads INGESTD_OPENSEARCH_* settings (URLs, index prefix, credentials). Prints what was done as "
            "JSON. Import the printed saved-objects file in OpenSearch Dashboards (Management → Saved "
            "objects → Import) and the Grafana file in Grafana (Dashboards → Import)."
        ),
    )
    install.add_argument("--url", action="append", help="OpenSearch URL (repeatable); overrides the settings")
    install.add_argument("--index-prefix", help="index prefix; overrides INGESTD_OPENSEARCH_INDEX_PREFIX")
    install.set_defaults(func=_install)

    dashboards = inner.add_parser("dashboards", help="print, write or check the dashboard files")
    mode = dashboards.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files from the code")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file drifted or does not validate")
    mode.add_argument("--print", choices=("grafana", "saved-objects"), help="print one file to stdout")
    dashboards.add_argument(
        "--index-prefix", default="ingestd-events", help="index prefix for the printed saved objects"
    )
    dashboards.set_defaults(func=_dashboards)

    docs = inner.add_parser("docs", help="print, write or check docs/METRICS.md")
    docs_mode = docs.add_mutually_exclusive_group()
    docs_mode.add_argument("--write", action="store_true", help="rewrite docs/METRICS.md")
    docs_mode.add_argument("--check", action="store_true", help="exit 1 if docs/METRICS.md drifted")
    docs.set_defaults(func=_docs)

    check = inner.add_parser(
        "check", help="check dashboards, docs/METRICS.md and (with promtool on PATH) the alert rules"
    )
    check.set_defaults(func=_check)

    bench = inner.add_parser(
        "bench-sink",
        help="measure EventSink.submit cost and indexing rate; prints JSON",
        description=(
            "With --url pointing at a closed port, measures what submit costs while OpenSearch is down "
            "(documents are dropped and counted). With a live OpenSearch, also the indexing rate."
        ),
    )
    bench.add_argument("--url", required=True, help="OpenSearch URL")
    bench.add_argument("--reports", type=int, default=10_000, help="reports to submit (default 10000)")
    bench.add_argument("--batch", type=int, default=500, help="reports per submit call (default 500)")
    bench.add_argument("--index-prefix", default="ingestd-bench", help="index prefix (default ingestd-bench)")
    bench.add_argument("--wait", type=float, default=120.0, help="seconds to wait for indexing (default 120)")
    bench.set_defaults(func=_bench_sink)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _install(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from monitoring.dashboards import GRAFANA_PATH, SAVED_OBJECTS_PATH, check_dashboard_files
    from monitoring.opensearch import OpenSearchSettings, install_template, make_client, template_name

    configure_logging(service="ingestd-monitoring")
    overrides: dict[str, Any] = {}
    if args.url:
        overrides["urls"] = args.url
    if args.index_prefix:
        overrides["index_prefix"] = args.index_prefix
    try:
        settings = OpenSearchSettings(**overrides)
    except ValidationError as error:
        print(f"invalid OpenSearch settings:\n{error}", file=sys.stderr)
        return 2
    if not settings.enabled:
        print("no OpenSearch URL: set INGESTD_OPENSEARCH_URLS or pass --url", file=sys.stderr)
        return 2
    from opensearchpy.exceptions import OpenSearchException

    try:
        result = install_template(make_client(settings), settings)
    except OpenSearchException as error:
        print(f"could not install the index template: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    problems = check_dashboard_files()
    _print_json(
        {
            "index_template": template_name(settings.index_prefix),
            "index_patterns": [f"{settings.index_prefix}-*"],
            "result": str(result),
            "opensearch_dashboards_saved_objects": str(SAVED_OBJECTS_PATH),
            "grafana_dashboard": str(GRAFANA_PATH),
            "dashboard_problems": problems,
        }
    )
    return 1 if problems else 0


def _dashboards(args: argparse.Namespace) -> int:
    from monitoring.dashboards import (
        check_dashboard_files,
        render_grafana,
        render_saved_objects,
        write_dashboard_files,
    )

    if args.write:
        for path in write_dashboard_files():
            print(f"wrote {path}")
        return 0
    if args.print == "grafana":
        sys.stdout.write(render_grafana())
        return 0
    if args.print == "saved-objects":
        sys.stdout.write(render_saved_objects(args.index_prefix))
        return 0
    problems = check_dashboard_files()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("dashboards: ok")
    return 1 if problems else 0


def _metrics_doc_path() -> Any:
    from pathlib import Path

    import monitoring

    return Path(monitoring.__file__).resolve().parent.parent / "docs" / "METRICS.md"


def _docs(args: argparse.Namespace) -> int:
    from monitoring.docs import render_metrics_markdown

    text = render_metrics_markdown()
    path = _metrics_doc_path()
    if args.write:
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} differs from the code; run `ingestd monitoring docs --write`", file=sys.stderr)
            return 1
        print("docs/METRICS.md: ok")
        return 0
    sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> int:
    from monitoring.dashboards import check_dashboard_files
    from monitoring.docs import RULES_DIR

    failed = False
    problems = check_dashboard_files()
    for problem in problems:
        print(problem, file=sys.stderr)
    failed |= bool(problems)
    failed |= _docs(argparse.Namespace(write=False, check=True)) != 0
    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not on PATH: alert rules not checked", file=sys.stderr)
        return 1
    rule_files = sorted(str(path) for path in RULES_DIR.glob("*.rules.yml"))
    test_files = sorted(str(path) for path in (RULES_DIR / "tests").glob("*.yml"))
    for command in ([promtool, "check", "rules", *rule_files], [promtool, "test", "rules", *test_files]):
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            failed = True
            print(completed.stdout + completed.stderr, file=sys.stderr)
        else:
            print(f"{' '.join(command[1:3])}: ok")
    return 1 if failed else 0


def _bench_sink(args: argparse.Namespace) -> int:
    from monitoring.bench import bench_sink
    from monitoring.opensearch import OpenSearchSettings

    configure_logging(service="ingestd-bench")
    settings = OpenSearchSettings(
        urls=[args.url],
        index_prefix=args.index_prefix,
        buffer_size=max(args.reports, 1),
        flush_size=min(1000, max(args.reports, 1)),
        flush_interval_s=0.2,
        retry_backoff_s=0.2,
        retry_backoff_max_s=1.0,
        request_timeout_s=10.0,
        number_of_replicas=0,
    )
    _print_json(bench_sink(settings, reports=args.reports, batch=args.batch, wait_s=args.wait))
    return 0
