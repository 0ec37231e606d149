"""``ingestd bench publisher`` at a tiny size: the command works and reports both figures."""

from __future__ import annotations

import json

import pytest

from ingestd.cli import build_parser
from ingestd.kafka import KafkaConnection

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_bench_publisher_reports_ours_and_the_hermesk_style_loop(
    postgres_url: str, kafka_central: KafkaConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        [
            "bench",
            "publisher",
            "--messages",
            "300",
            "--baseline-messages",
            "50",
            "--batch-size",
            "100",
            "--postgres-url",
            postgres_url,
            "--bootstrap-servers",
            ",".join(kafka_central.bootstrap_servers),
            "--json",
        ]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ours"]["messages"] == 300
    assert report["ours"]["batches"] == 3
    assert report["hermesk_style"]["messages"] == 50
    assert report["ours"]["messages_per_s"] > 0
    assert report["hermesk_style"]["messages_per_s"] > 0
    assert report["ratio"] is not None
    assert set(report["targets"]) >= {"ours_messages_per_s", "ratio", "met"}
