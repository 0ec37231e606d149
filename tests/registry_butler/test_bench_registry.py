"""``ingestd bench registry`` at CI size: the command runs end to end and reports what it promises.

Figures are not asserted (the machine is shared); the coordinator runs the full sizes
(``--datasets 20000``, ``--grow-to 1000000``) on a quiet machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from ingestd.cli import main

pytestmark = [pytest.mark.butler, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command configures logging for the process, as a CLI does; undo it for the tests after."""
    saved_config = dict(structlog.get_config())
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.configure(**saved_config)
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _scratch_databases(postgres_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ingestd_bench_%'")
        return {row[0] for row in rows}


def test_comparison_reports_both_contenders(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _scratch_databases(postgres_url)
    code = main(
        [
            "bench",
            "registry",
            "--datasets",
            "300",
            "--batch",
            "50,500",
            "--json",
            "--postgres",
            postgres_url,
            "--workdir",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["benchmark"] == "registry"
    assert [row["batch"] for row in report["results"]] == [50, 500]
    for row in report["results"]:
        for side in ("ours", "butler"):
            assert row[side]["datasets"] == 300
            assert row[side]["registered"] == 300
            assert row[side]["datasets_per_s"] > 0
        assert row["ratio"] == pytest.approx(
            row["ours"]["datasets_per_s"] / row["butler"]["datasets_per_s"], rel=0.01
        )
        assert row["target_ratio"] == {50: 20.0, 500: 5.0}[row["batch"]]
        assert row["pass"] == (row["ratio"] >= row["target_ratio"])
    assert report["pass"] == all(row["pass"] for row in report["results"])
    assert report["environment"]["daf_butler"]
    assert "postgres@" not in captured.out, "no user name in the report"
    assert "batch 50:" in captured.err, "progress goes to standard error"
    assert _scratch_databases(postgres_url) == before, "scratch databases are dropped"


def test_growth_samples_memory(postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "registry",
            "--grow-to",
            "1500",
            "--report-every",
            "500",
            "--batch",
            "250",
            "--postgres",
            postgres_url,
            "--workdir",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["benchmark"] == "registry-growth"
    assert [sample["datasets"] for sample in report["samples"]] == [500, 1000, 1500]
    assert all(sample["rss_mb"] > 0 and sample["rate_per_s"] > 0 for sample in report["samples"])
    assert report["rss_growth_mb"] == pytest.approx(
        report["samples"][-1]["rss_mb"] - report["samples"][0]["rss_mb"], abs=0.2
    )
    assert report["pass"] == (report["rss_growth_mb"] <= 64)


def test_missing_server_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("INGESTD_BENCH_POSTGRES_URL", raising=False)
    monkeypatch.delenv("INGESTD_TEST_POSTGRES_URL", raising=False)
    assert main(["bench", "registry", "--datasets", "10"]) == 2
    assert "--postgres" in capsys.readouterr().err
