"""``ingestd bench backfill``, CI-sized: it runs end to end and reports its figures (no timings asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_backfill_reports_rate_and_memory(postgres_url: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ingestd", "bench", "backfill", "--replicas", "300", "--json"],
        cwd=ROOT,
        env={**os.environ, "INGESTD_TEST_POSTGRES_URL": postgres_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert figures["outcomes"]["registered"] == 300
    assert figures["replicas_per_s"] > 0
    assert figures["peak_rss_mb"] > 0
    assert set(figures["targets"]) == {"replicas_per_s", "peak_rss_mb", "met"}
