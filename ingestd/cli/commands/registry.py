"""``ingestd registry ...``: create, migrate, inspect, export and share the SQL registry.

The registry's URL comes from ``INGESTD_REGISTRY_URL`` (password in
``INGESTD_REGISTRY_PASSWORD_FILE``) or ``--url``; SQLite (``sqlite:///file``) is the
default. Every sub-command prints one JSON document on standard output (logs go to
standard error) and exits 0 on success, 1 when the registry refused (a conflict, a schema
to upgrade), 2 on bad settings and 75 when the database is unreachable (retry later).

* ``init``: create the schema on an empty database (run once, by the role that will own
  the tables and write them: the ingest role).
* ``upgrade``: migrate the schema to the version this ingestd ships.
* ``stats``: counts of datasets, runs, dataset types and dimension records.
* ``export [--run R ...] -o FILE``: a Butler export YAML that ``butler import`` accepts.
* ``import-dimensions FILE`` / ``import-zip FILE``: what a ``dim_file``/``zip_file`` event does.
* ``grant-readonly ROLE [--login] [--password-file F]``: a PostgreSQL role that can read,
  not write.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = ["register"]

EXIT_REFUSED = 1
EXIT_CONFIGURATION = 2
EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: try again later


def register(subparsers: Any) -> None:
    """Add ``registry`` and its sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "registry",
        help="create, migrate, inspect, export the SQL registry; grant read-only access",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    inner = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = inner.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--url",
            default=None,
            help="registry database URL (default: INGESTD_REGISTRY_URL, else sqlite:///ingestd-registry.sqlite3)",
        )
        sub.set_defaults(func=func)
        return sub

    add("init", "create the registry schema on an empty database (idempotent)", _init)
    add("upgrade", "migrate the registry schema to the version this ingestd ships", _upgrade)
    add("stats", "print counts of datasets, runs, dataset types and dimension records", _stats)
    export = add("export", "write a Butler export YAML that `butler import` accepts", _export)
    export.add_argument(
        "--run",
        action="append",
        default=None,
        metavar="RUN",
        help="export only this RUN collection (repeatable) and the dimension records its datasets need",
    )
    export.add_argument(
        "-o", "--output", required=True, type=Path, metavar="FILE", help="YAML file to write ('-': stdout)"
    )
    dims = add(
        "import-dimensions",
        "import the dimension records (and datasets) of a Butler export YAML",
        _import_dimensions,
    )
    dims.add_argument("file", type=Path, metavar="FILE", help="Butler export YAML")
    zipped = add("import-zip", "register the datasets of a Butler zip (retrieve_artifacts_zip)", _import_zip)
    zipped.add_argument("file", type=Path, metavar="FILE", help="Butler zip")
    grant = add(
        "grant-readonly", "create a PostgreSQL role that can read the registry but not write it", _grant
    )
    grant.add_argument("role", metavar="ROLE", help="role to create or update")
    grant.add_argument(
        "--login", action="store_true", help="let the role log in (default: NOLOGIN group role)"
    )
    grant.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file holding the role's password (implies --login)",
    )


def _emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=str))


def _run(args: argparse.Namespace, action: Callable[[str, Any], int]) -> int:
    """Load settings and logging, then run ``action(url, settings)`` with errors mapped to exit codes."""
    from butler_registry import (
        RegistryConfigurationError,
        RegistrySettings,
        SchemaVersionError,
        TransientRegistryError,
    )
    from ingestd.log import LoggingSettings, configure_logging

    try:
        configure_logging(LoggingSettings(), service="registry")
        settings = RegistrySettings(url=args.url) if args.url else RegistrySettings()
        url = settings.resolved_url()
    except (ValidationError, OSError) as error:
        print(f"ingestd registry: invalid settings: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION
    try:
        return action(url, settings)
    except RegistryConfigurationError as error:
        print(f"ingestd registry {args.registry_command}: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except SchemaVersionError as error:
        print(f"ingestd registry {args.registry_command}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except TransientRegistryError as error:
        print(f"ingestd registry {args.registry_command}: database unavailable: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _init(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import create_registry_engine, schema_state, upgrade

        engine = create_registry_engine(url)
        try:
            before = schema_state(engine)
            if before.current is not None and before.current != before.head:
                print(
                    f"ingestd registry init: schema already exists at revision {before.current}; "
                    "use `ingestd registry upgrade`",
                    file=sys.stderr,
                )
                return EXIT_REFUSED
            after = upgrade(engine) if before.current is None else before
        finally:
            engine.dispose()
        _emit({"url": settings.display_url(), "created": before.current is None, "revision": after.current})
        return 0

    return _run(args, action)


def _upgrade(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import create_registry_engine, schema_state, upgrade

        engine = create_registry_engine(url)
        try:
            before = schema_state(engine)
            after = upgrade(engine)
        finally:
            engine.dispose()
        _emit({"url": settings.display_url(), "from": before.current, "to": after.current})
        return 0

    return _run(args, action)


def _stats(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import open_registry

        with open_registry(url, record_cache_size=0) as registry:
            stats = registry.stats()
        _emit({"url": settings.display_url(), **asdict(stats)})
        return 0

    return _run(args, action)


def _export(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import open_registry

        with open_registry(url, record_cache_size=0) as registry:
            try:
                if str(args.output) == "-":
                    summary = registry.export(sys.stdout, args.run)
                else:
                    partial = args.output.with_name(args.output.name + ".partial")
                    with partial.open("w", encoding="utf-8") as stream:
                        summary = registry.export(stream, args.run)
                    partial.replace(args.output)
            except KeyError as error:
                print(f"ingestd registry export: {error.args[0]}", file=sys.stderr)
                return EXIT_REFUSED
        document = {"url": settings.display_url(), "output": str(args.output), **asdict(summary)}
        print(json.dumps(document, indent=2), file=sys.stderr if str(args.output) == "-" else sys.stdout)
        return 0

    return _run(args, action)


def _import_result(result: Any) -> dict[str, Any]:
    from collections import Counter

    return {
        "status": str(result.status),
        "reason": result.reason,
        "dimension_records_inserted": result.dimension_records_inserted,
        "dimension_records_present": result.dimension_records_present,
        "datasets": dict(Counter(str(item.status) for item in result.datasets)),
    }


def _import_dimensions(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import Provenance, open_registry

        with open_registry(url) as registry:
            result = registry.import_dimensions(args.file, Provenance(source="file", name=str(args.file)))
        _emit({"file": str(args.file), **_import_result(result)})
        return 0 if result.status.ok else EXIT_REFUSED

    return _run(args, action)


def _import_zip(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import Provenance, open_registry

        with open_registry(url) as registry:
            result = registry.import_zip(args.file, Provenance(source="file", name=str(args.file)))
        _emit({"file": str(args.file), **_import_result(result)})
        return 0 if result.status.ok else EXIT_REFUSED

    return _run(args, action)


def _grant(args: argparse.Namespace) -> int:
    def action(url: str, settings: Any) -> int:
        from butler_registry import create_registry_engine, grant_readonly

        password = None
        if args.password_file is not None:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\n")
        engine = create_registry_engine(url)
        try:
            created = grant_readonly(engine, args.role, login=args.login, password=password)
        finally:
            engine.dispose()
        _emit(
            {
                "url": settings.display_url(),
                "role": args.role,
                "created": created,
                "login": args.login or bool(password),
            }
        )
        return 0

    return _run(args, action)
