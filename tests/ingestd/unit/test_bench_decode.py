"""``ingestd bench decode`` runs at a tiny size and reports its figures as JSON (no timing asserted)."""

from __future__ import annotations

import argparse
import json

import pytest

from ingestd.bench import decode


def test_workload_is_distinct_real_format_events() -> None:
    events = decode.make_events(100)
    assert len(set(events)) == 100
    kinds = [json.loads(raw)["payload"]["rubin_butler"] for raw in events]
    assert kinds.count("data_product") == 90
    assert kinds.count("raw_file") == 8
    assert kinds.count("dim_file") == 2


def test_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    decode.register(parser.add_subparsers())
    args = parser.parse_args(["decode", "--events", "200", "--repeat", "1", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "decode"
    assert result["planned"] == {"ImportDimensions": 4, "RegisterDataset": 196}
    assert result["plan_events_per_s"] > 0
    assert result["target_events_per_s"] == decode.TARGET_EVENTS_PER_S
    assert set(result["anchors"]) == {
        "stdlib_json_loads_envelope_and_sidecar_per_s",
        "pydantic_core_from_json_per_s",
    }


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert decode.run(argparse.Namespace(events=0, repeat=1, json=True)) == 2
    assert "--events" in capsys.readouterr().err
