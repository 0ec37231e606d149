"""``ingestd registry ...`` end to end, through the real command line entry point."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from butler_registry import head_revision
from ingestd.cli import main

from .conftest import BUTLER_ZIP


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    code = main(["registry", *argv])
    captured = capsys.readouterr()
    document = json.loads(captured.out) if captured.out.strip() else {}
    return code, document, captured.err


def test_registry_commands_on_sqlite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("INGESTD_REGISTRY_URL", url)
    monkeypatch.setenv("INGESTD_LOG_FORMAT", "json")

    code, stats, err = _run(capsys, "stats")
    assert code == 1
    assert "registry init" in err

    code, document, _ = _run(capsys, "init")
    assert (code, document["created"], document["revision"]) == (0, True, head_revision())
    code, document, _ = _run(capsys, "init")
    assert (code, document["created"]) == (0, False)

    code, document, _ = _run(capsys, "import-dimensions", str(samples_dir / "prep.yaml"))
    assert (code, document["status"], document["dimension_records_inserted"]) == (0, "inserted", 233)
    code, document, _ = _run(capsys, "import-zip", str(BUTLER_ZIP))
    assert (code, document["status"], document["datasets"]) == (0, "inserted", {"inserted": 3})

    code, stats, _ = _run(capsys, "stats")
    assert code == 0
    assert (stats["datasets"], stats["runs"], stats["dataset_types"]) == (3, 1, 2)

    output = tmp_path / "export.yaml"
    code, document, _ = _run(capsys, "export", "--run", "HSC/runs/test", "-o", str(output))
    assert (code, document["datasets"]) == (0, 3)
    assert output.read_text().startswith("description: Butler Data Repository Export\n")
    assert not output.with_name("export.yaml.partial").exists()
    code, _, err = _run(capsys, "export", "--run", "nowhere", "-o", str(output))
    assert code == 1
    assert "nowhere" in err

    code, document, _ = _run(capsys, "upgrade")
    assert (code, document["from"], document["to"]) == (0, head_revision(), head_revision())
    code, _, err = _run(capsys, "grant-readonly", "reader")
    assert code == 2
    assert "PostgreSQL" in err


def test_bad_url_is_a_settings_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "stats", "--url", "mysql://db/x")
    assert code == 2
    assert "not supported" in err


def test_unreachable_database_exits_75(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.local import free_port

    code, _, err = _run(capsys, "stats", "--url", f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    assert code == 75
    assert "unavailable" in err


@pytest.mark.postgres
def test_grant_readonly_command(
    capsys: pytest.CaptureFixture[str], postgres_database: str, tmp_path: Path
) -> None:
    role = f"cli_reader_{uuid.uuid4().hex[:8]}"
    password_file = tmp_path / "password"
    password_file.write_text("reader-password\n")
    assert _run(capsys, "init", "--url", postgres_database)[0] == 0
    code, document, _ = _run(
        capsys, "grant-readonly", role, "--password-file", str(password_file), "--url", postgres_database
    )
    try:
        assert (code, document["created"], document["login"]) == (0, True, True)
        admin_url = (
            make_url(postgres_database).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        with psycopg.connect(admin_url) as admin:
            row = admin.execute(
                "SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        assert row == (True, True)
    finally:
        admin_url = (
            make_url(postgres_database).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')
