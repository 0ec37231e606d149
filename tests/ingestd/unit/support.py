"""Helpers of the ingestd unit tests: the shared real-format samples and rules that map them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingestd.mapping import UrlMapper
from ingestd.planning import PlanRules
from ingestd.sitemap import SiteMap

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
"""The shared samples (tests/data/samples): ctrl_ingestd's real-format messages."""

VALID_SAMPLES = ("message.json", "message440.json", "raw_message.json", "dim_message.json")
"""Samples that decode into work (``nosidecar.json`` and ``truncated.json`` are special)."""


class Prefix:
    """A prefix pair, as the config's TopicPrefix and the site map's RsePrefix provide it."""

    def __init__(self, rucio_prefix: str, fs_prefix: str) -> None:
        self.rucio_prefix = rucio_prefix
        self.fs_prefix = fs_prefix


def sample_bytes(name: str) -> bytes:
    """A shared sample as the raw record Kafka would deliver."""
    return (SAMPLES / name).read_bytes()


def sample_event(name: str) -> dict[str, Any]:
    """A shared sample, parsed."""
    document: dict[str, Any] = json.loads(sample_bytes(name))
    return document


def encode(event: dict[str, Any]) -> bytes:
    """An event as a raw record."""
    return json.dumps(event).encode()


def ctrl_ingestd_rules(fs_root: Path | str = "/data/rucio", **options: Any) -> PlanRules:
    """Rules like ctrl_ingestd's test configuration: one topic per destination RSE of the samples."""
    topics = {
        "XRD5-test": Prefix("root://xrd5:1098//rucio", f"file://{fs_root}/xrd5"),
        "XRD2-test": Prefix("root://xrd2:1095//rucio/", f"{fs_root}/xrd2/"),
    }
    site = options.pop("site", SiteMap())
    return PlanRules(mapper=UrlMapper(topics), site=site, **options)
