"""``ingestd bench mirror`` at a CI size: the command runs both replicators and prints its JSON.

Figures are not asserted (the machine is shared and small); the full-size run
is ``ingestd bench mirror --records 200000 --size 2000 --json`` on a quiet machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingestd.kafka import KafkaConnection, make_admin

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_bench_mirror_runs_both_tools_and_cleans_up(
    kafka_central: KafkaConnection, kafka_local: KafkaConnection
) -> None:
    env = {
        **os.environ,
        "INGESTD_TEST_KAFKA_CENTRAL": kafka_central.bootstrap_servers[0],
        "INGESTD_TEST_KAFKA_LOCAL": kafka_local.bootstrap_servers[0],
    }
    completed = subprocess.run(
        [sys.executable, "-m", "ingestd", "bench", "mirror", "--records", "3000", "--size", "300", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert result["records"] == 3000
    for tool in ("ingestd", "mirrormaker2"):
        figures = result[tool]
        assert figures["visible_records"] == 3000  # all of them, and no duplicate
        assert figures["records_per_s"] > 0
        assert figures["startup_s"] >= 0
    mm2_config = result["mirrormaker2"]["config"]
    assert [v for k, v in mm2_config.items() if k.endswith(".exactly.once.source.support")] == ["enabled"]
    assert [v for k, v in mm2_config.items() if k.endswith(".consumer.isolation.level")] == ["read_committed"]
    assert isinstance(result["ratio"], float)
    assert result["target"].startswith(">= 1.0")
    run_id = result["ingestd"]["config"]["source_alias"].removeprefix("ours")
    left = [t for t in make_admin(kafka_central).list_topics(timeout=10).topics if run_id in t]
    assert not left, f"the run's topics were not deleted: {left}"
