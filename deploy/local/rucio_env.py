"""The real Rucio server package, in a virtualenv of its own, as a peer for the publisher's tests.

The publisher reads Rucio's ``messages`` table and DID metadata with its own SQL;
its tests must prove that against tables made by Rucio itself and rows written by
Rucio's own ``add_message``. ``rucio[postgresql]`` pins SQLAlchemy 2.0.x and
alembic with ``<=`` and writes the same top-level ``rucio`` package as
``rucio-clients`` (which the project's environment holds), so it lives apart:

* :func:`ensure_rucio_venv` creates ``<test-bed cache>/rucio-<version>-venv`` once
  (about 30 s, 240 MB) and reuses it afterwards;
* :func:`write_rucio_config` writes the ``rucio.cfg`` (and the ``alembic.ini`` it
  names) that point Rucio at one database;
* :func:`ensure_template_database` bootstraps Rucio's schema (75 tables, base VO,
  root account) into a template database once per server, and
  :func:`clone_database` copies it in a tenth of a second for each test;
* :class:`RucioEnv` runs Python snippets inside that virtualenv with a given
  configuration, passing JSON in and out (e.g. ``add_messages`` for 20,000 events
  in one process).

Standard library only, like the rest of :mod:`deploy.local`; PostgreSQL's own
``createdb``/``dropdb``/``psql`` do the administration.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._base import Layout, ServerError, file_lock, log
from .postgres import postgres_bindir

__all__ = [
    "RUCIO_VERSION",
    "TEMPLATE_DATABASE",
    "PostgresAdmin",
    "RucioEnv",
    "RucioSnippetError",
    "clone_database",
    "ensure_rucio_venv",
    "ensure_template_database",
    "write_rucio_client_config",
    "write_rucio_config",
]

RUCIO_VERSION = "41.5.1"
"""The Rucio release the tests run against (the one measured in TESTBED.md)."""

_BOOTSTRAP_REVISION = 1
"""Bumped whenever the template's content changes, so a stale template is never reused."""

TEMPLATE_DATABASE = f"rucio_{RUCIO_VERSION.replace('.', '_')}_template_r{_BOOTSTRAP_REVISION}"
"""Name of the bootstrapped database every test database is cloned from."""

DEFAULT_SERVICES = ("activemq",)
"""``[hermes] services_list``: Rucio 41 refuses ``kafka``, so tests tag their rows ``activemq``."""


class RucioSnippetError(RuntimeError):
    """A snippet run in the Rucio virtualenv failed; the message carries its standard error."""


def ensure_rucio_venv(layout: Layout | None = None, *, python: str | None = None) -> Path:
    """Create (first call) and return the Rucio virtualenv's folder.

    Parameters
    ----------
    layout
        Test-bed folders; the virtualenv goes under its cache.
    python
        Interpreter to build the virtualenv from (default: the one running this code).

    Raises
    ------
    ServerError
        When pip cannot install the package; the message names the command to retry by hand.
    """
    layout = layout or Layout.default()
    venv = layout.cache / f"rucio-{RUCIO_VERSION}-venv"
    marker = venv / ".complete"
    if marker.exists():
        return venv
    with file_lock(layout.cache / ".rucio-venv.lock"):
        if marker.exists():  # another process finished it while we waited
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log(f"creating the Rucio {RUCIO_VERSION} virtualenv in {venv} (first run only, ~30 s)")
        began = time.monotonic()
        subprocess.run([python or sys.executable, "-m", "venv", str(venv)], check=True)
        command = [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"rucio[postgresql]=={RUCIO_VERSION}",
        ]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(
                f"installing rucio {RUCIO_VERSION} failed ({' '.join(command)}):\n{result.stderr[-2000:]}"
            )
        marker.touch()
        log(f"Rucio virtualenv ready ({time.monotonic() - began:.0f} s)")
    return venv


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/rucio"))
    if not found:
        raise ServerError(f"no rucio package in {venv}; delete the folder to have it rebuilt")
    return found[0].parent


def write_rucio_config(
    directory: Path,
    database_url: str,
    *,
    venv: Path,
    services: Sequence[str] = DEFAULT_SERVICES,
    schema: str | None = None,
    pool_size: int = 2,
) -> Path:
    """Write ``rucio.cfg`` and its ``alembic.ini`` for one database; return the ``rucio.cfg`` path.

    Parameters
    ----------
    directory
        Where both files (and Rucio's log folder) go.
    database_url
        SQLAlchemy URL; ``postgresql://`` is turned into ``postgresql+psycopg://`` (the driver
        ``rucio[postgresql]`` ships).
    venv
        The Rucio virtualenv, whose shipped ``alembic.ini.template`` and migration scripts are used.
    services
        ``[hermes] services_list``: one ``messages`` row is written per service and event.
    schema
        Rucio's ``[database] schema``; None for the default ``public`` schema.
    pool_size
        ``[database] pool_size`` and ``max_overflow``: a REST server answering several
        requests at once needs more than the default 2 (one ``list_replicas`` holds two
        connections), or its threads wait for each other's connections.
    """
    directory.mkdir(parents=True, exist_ok=True)
    url = _rucio_url(database_url)
    site = _site_packages(venv)

    alembic = configparser.ConfigParser(strict=False, interpolation=None)
    template = venv / "rucio" / "etc" / "alembic.ini.template"
    if template.exists():
        alembic.read(template)
    if not alembic.has_section("alembic"):
        alembic.add_section("alembic")
    for stale in ("default", "version_table_schema"):
        alembic.remove_option("alembic", stale)
    alembic.set("alembic", "sqlalchemy.url", url.replace("%", "%%"))
    alembic.set("alembic", "script_location", str(site / "rucio" / "db" / "sqla" / "migrate_repo"))
    if schema:
        alembic.set("alembic", "version_table_schema", schema)
    alembic_path = directory / "alembic.ini"
    with open(alembic_path, "w") as handle:
        alembic.write(handle)

    config = configparser.ConfigParser(interpolation=None)
    config["common"] = {"logdir": str(directory / "log"), "loglevel": "WARNING"}
    config["database"] = {"default": url, "pool_size": str(pool_size), "max_overflow": str(pool_size)}
    if schema:
        config["database"]["schema"] = schema
    config["bootstrap"] = {
        "userpass_identity": "ddmlab",
        "userpass_pwd": "secret",
        "userpass_email": "ingestd-tests@example.org",
    }
    config["policy"] = {
        "permission": "generic",
        "schema": "generic",
        "lfn2pfn_algorithm_default": "hash",
    }
    config["alembic"] = {"cfg": str(alembic_path)}
    config["monitor"] = {"enable_metrics": "False"}
    config["hermes"] = {"services_list": ",".join(services)}
    (directory / "log").mkdir(exist_ok=True)
    path = directory / "rucio.cfg"
    with open(path, "w") as handle:
        config.write(handle)
    return path


def write_rucio_client_config(directory: Path, server_url: str) -> Path:
    """Write a ``rucio.cfg`` for rucio-clients talking to a test server as root (userpass); return its path.

    The credentials are the bootstrap identity :func:`write_rucio_config` declares.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = configparser.ConfigParser(interpolation=None)
    config["client"] = {
        "rucio_host": server_url,
        "auth_host": server_url,
        "auth_type": "userpass",
        "username": "ddmlab",
        "password": "secret",
        "account": "root",
        "request_retries": "2",
        "auth_token_file_path": str(directory / "token"),
    }
    path = directory / "rucio-client.cfg"
    with open(path, "w") as handle:
        config.write(handle)
    return path


_REST_SERVER = textwrap.dedent(
    """
    import sys
    from werkzeug.serving import make_server
    from rucio.web.rest.flaskapi.v1.main import application
    make_server("127.0.0.1", int(sys.argv[1]), application, threaded=True).serve_forever()
    """
)


def _rucio_url(database_url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if database_url.startswith(plain):
            return "postgresql+psycopg://" + database_url[len(plain) :]
    return database_url


_SNIPPET_WRAPPER = textwrap.dedent(
    """
    import json, os, sys
    data = json.load(sys.stdin)
    namespace = {"data": data, "result": None}
    exec(compile(os.environ["INGESTD_RUCIO_SNIPPET"], "<rucio snippet>", "exec"), namespace)
    with open(os.environ["INGESTD_RUCIO_RESULT"], "w") as out:
        json.dump(namespace.get("result"), out, default=str)
    """
)


@dataclass(frozen=True)
class RucioEnv:
    """Runs Python in the Rucio virtualenv against one ``rucio.cfg``.

    Each :meth:`run` is one process: importing Rucio costs about a second, so batch the
    work (thousands of ``add_message`` calls in one snippet, not one process each).
    """

    venv: Path
    config: Path

    @property
    def python(self) -> Path:
        """The virtualenv's interpreter."""
        return self.venv / "bin" / "python"

    def run(self, code: str, data: Any = None, *, timeout_s: float = 600.0) -> Any:
        """Execute ``code`` with ``data`` bound to the JSON-decoded input; return its ``result``.

        The snippet sets a global ``result`` to anything JSON can encode (``str`` is used for
        the rest). Standard output is free for Rucio's own prints.

        Raises
        ------
        RucioSnippetError
            When the snippet raises or the process times out; carries its standard error.
        """
        with tempfile.TemporaryDirectory(prefix="rucio-snippet-") as scratch:
            result_path = Path(scratch) / "result.json"
            env = {
                **os.environ,
                "RUCIO_CONFIG": str(self.config),
                "INGESTD_RUCIO_SNIPPET": textwrap.dedent(code),
                "INGESTD_RUCIO_RESULT": str(result_path),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            env.pop("PYTHONPATH", None)  # never let the project's packages shadow Rucio's
            try:
                completed = subprocess.run(
                    [str(self.python), "-c", _SNIPPET_WRAPPER],
                    input=json.dumps(data),
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout_s,
                    check=False,
                    cwd=scratch,
                )
            except subprocess.TimeoutExpired as error:
                raise RucioSnippetError(f"Rucio snippet did not finish within {timeout_s:.0f} s") from error
            if completed.returncode != 0:
                raise RucioSnippetError(
                    f"Rucio snippet failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
                )
            return json.loads(result_path.read_text())

    # -- conveniences used by the publisher's tests and benchmarks ---------------------------
    def add_messages(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Write events with Rucio's own ``add_messages`` (``[{event_type, payload}]``), one transaction.

        Returns the number of ``messages`` rows now in the table (one per event and service).
        """
        return int(
            self.run(
                """
                from sqlalchemy import func, select
                from rucio.core.message import add_messages
                from rucio.db.sqla.models import Message
                from rucio.db.sqla.session import get_session
                add_messages(data)
                with get_session()() as session:
                    result = session.execute(select(func.count()).select_from(Message)).scalar_one()
                """,
                [dict(event) for event in events],
            )
        )

    def add_rses_and_scopes(self, rses: Sequence[str], scopes: Sequence[str]) -> None:
        """Create RSEs and scopes (owned by root) that replicas and DIDs need."""
        self.run(
            """
            from rucio.common.types import InternalAccount, InternalScope
            from rucio.core.rse import add_rse
            from rucio.core.scope import add_scope
            from rucio.db.sqla.session import get_session
            with get_session()() as session, session.begin():
                for rse in data["rses"]:
                    add_rse(rse, vo="def", session=session)
                for scope in data["scopes"]:
                    add_scope(InternalScope(scope), InternalAccount("root"), session=session)
            """,
            {"rses": list(rses), "scopes": list(scopes)},
        )

    def add_files_with_metadata(self, rse: str, files: Sequence[Mapping[str, Any]]) -> None:
        """Register file replicas with DID metadata (``[{scope, name, bytes, adler32, meta}]``).

        Uses ``rucio.core.replica.add_replicas``, which stores custom keys such as
        ``rubin_butler`` and ``rubin_sidecar`` through the JSON metadata plugin (``did_meta``).
        """
        self.run(
            """
            from rucio.common.types import InternalAccount, InternalScope
            from rucio.core.replica import add_replicas
            from rucio.core.rse import get_rse_id
            files = []
            for item in data["files"]:
                entry = dict(item)
                entry["scope"] = InternalScope(entry["scope"])
                files.append(entry)
            add_replicas(rse_id=get_rse_id(data["rse"], vo="def"), files=files,
                         account=InternalAccount("root"))
            """,
            {"rse": rse, "files": [dict(f) for f in files]},
        )

    def add_rse_protocol(self, rse: str, *, scheme: str, hostname: str, port: int, prefix: str) -> None:
        """Give ``rse`` a read/write/delete protocol, so ``list_replicas`` builds PFNs for its replicas.

        With the test configuration's ``hash`` algorithm a file's PFN is
        ``{scheme}://{hostname}:{port}{prefix}{scope}/{xx}/{yy}/{name}``.
        """
        self.run(
            """
            from rucio.core.rse import add_protocol, get_rse_id
            from rucio.db.sqla.session import get_session
            domains = {"lan": {"read": 1, "write": 1, "delete": 1},
                       "wan": {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1,
                               "third_party_copy_write": 1}}
            with get_session()() as session, session.begin():
                add_protocol(get_rse_id(data["rse"], vo="def", session=session), {
                    "scheme": data["scheme"], "hostname": data["hostname"], "port": data["port"],
                    "prefix": data["prefix"], "impl": "rucio.rse.protocols.xrootd.Default",
                    "domains": domains}, session=session)
            """,
            {"rse": rse, "scheme": scheme, "hostname": hostname, "port": port, "prefix": prefix},
        )

    def add_replicas_in_chunks(
        self, rse: str, files: Sequence[Mapping[str, Any]], *, chunk_size: int = 5_000
    ) -> None:
        """Like :meth:`add_files_with_metadata` for many files: one process, one transaction per chunk."""
        self.run(
            """
            from rucio.common.types import InternalAccount, InternalScope
            from rucio.core.replica import add_replicas
            from rucio.core.rse import get_rse_id
            from rucio.db.sqla.session import get_session
            rse_id = get_rse_id(data["rse"], vo="def")
            items = data["files"]
            for start in range(0, len(items), data["chunk"]):
                chunk = []
                for item in items[start:start + data["chunk"]]:
                    entry = dict(item)
                    entry["scope"] = InternalScope(entry["scope"])
                    chunk.append(entry)
                with get_session()() as session, session.begin():
                    add_replicas(rse_id=rse_id, files=chunk, account=InternalAccount("root"), session=session)
            """,
            {"rse": rse, "files": [dict(f) for f in files], "chunk": chunk_size},
            timeout_s=3_600.0,
        )

    def delete_replicas(self, rse: str, dids: Sequence[tuple[str, str]]) -> None:
        """Remove the replicas of ``dids`` at ``rse`` (the files stay in the catalogue)."""
        self.run(
            """
            from rucio.common.types import InternalScope
            from rucio.core.replica import delete_replicas
            from rucio.core.rse import get_rse_id
            delete_replicas(rse_id=get_rse_id(data["rse"], vo="def"),
                            files=[{"scope": InternalScope(s), "name": n} for s, n in data["dids"]])
            """,
            {"rse": rse, "dids": [list(did) for did in dids]},
        )

    @contextlib.contextmanager
    def rest_server(self, port: int, *, timeout_s: float = 60.0) -> Iterator[str]:
        """Serve Rucio's REST API (the real Flask application) on ``127.0.0.1:port``; yields its URL.

        Werkzeug's threaded server, in its own process, stopped when the block ends.
        """
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RUCIO_CONFIG": str(self.config), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTHONPATH", None)
        log_path = self.config.parent / "rest-server.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [str(self.python), "-c", _REST_SERVER, str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise ServerError(f"Rucio REST server exited:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"Rucio REST server did not answer /ping in {timeout_s:.0f} s")
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def bootstrap(self) -> None:
        """Build Rucio's schema, the base VO and the root account in the configured database."""
        self.run(
            """
            import contextlib, io
            from rucio.db.sqla.util import build_database, create_base_vo, create_root_account
            with contextlib.redirect_stdout(io.StringIO()):
                build_database()
            create_base_vo()
            create_root_account()
            """
        )


@dataclass(frozen=True)
class PostgresAdmin:
    """PostgreSQL administration through the server's own client programs (no Python driver needed)."""

    host: str
    port: int
    user: str
    bindir: Path

    @classmethod
    def from_url(cls, url: str) -> PostgresAdmin:
        """Parse a superuser URL such as ``postgresql://postgres@127.0.0.1:15432/postgres``."""
        parsed = urllib.parse.urlsplit(url.replace("postgresql+psycopg://", "postgresql://"))
        bindir = os.environ.get("INGESTD_TESTBED_POSTGRES_BIN")
        found = Path(bindir) if bindir else postgres_bindir()
        if found is None:
            raise ServerError("PostgreSQL client programs not found; install Debian's postgresql package")
        return cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            user=urllib.parse.unquote(parsed.username or "postgres"),
            bindir=found,
        )

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bindir / program), "-h", self.host, "-p", str(self.port), "-U", self.user, *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stdout

    def exists(self, database: str) -> bool:
        """Whether ``database`` exists."""
        out = self._run(
            "psql", "-d", "postgres", "-tA", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"
        )
        return out.strip() == "1"

    def create(self, database: str, *, template: str | None = None) -> None:
        """Create ``database``, optionally as a copy of ``template``."""
        args = ["-T", template] if template else []
        self._run("createdb", *args, database)

    def drop(self, database: str) -> None:
        """Drop ``database`` if it exists, disconnecting its clients."""
        self._run("dropdb", "--if-exists", "--force", database)

    def rename(self, database: str, new_name: str) -> None:
        """Rename ``database`` (atomic: the new name appears complete or not at all)."""
        self._run("psql", "-d", "postgres", "-c", f'ALTER DATABASE "{database}" RENAME TO "{new_name}"')


def ensure_template_database(
    admin: PostgresAdmin, venv: Path, scratch: Path, *, name: str = TEMPLATE_DATABASE
) -> str:
    """Bootstrap Rucio's schema into ``name`` once per server; return the name.

    The schema is built in a database with a temporary name and renamed when complete,
    so a concurrent or interrupted bootstrap never leaves a half-built template behind.
    """
    if admin.exists(name):
        return name
    building = f"{name}_building_{uuid.uuid4().hex[:8]}"
    admin.create(building)
    try:
        config = write_rucio_config(scratch / building, admin.url(building), venv=venv)
        began = time.monotonic()
        RucioEnv(venv, config).bootstrap()
        log(f"bootstrapped Rucio schema into {name} ({time.monotonic() - began:.1f} s)")
        try:
            admin.rename(building, name)
        except ServerError:
            if not admin.exists(name):
                raise
            # Another session finished first; theirs is as good as ours.
    finally:
        with contextlib.suppress(ServerError):
            admin.drop(building)
    return name


@contextlib.contextmanager
def clone_database(admin: PostgresAdmin, template: str, name: str | None = None) -> Iterator[str]:
    """A fresh copy of ``template`` for one test; dropped afterwards. Yields its SQLAlchemy URL."""
    name = name or f"rucio_{uuid.uuid4().hex[:16]}"
    admin.create(name, template=template)
    try:
        yield admin.url(name)
    finally:
        admin.drop(name)
