"""What the backfill tests share: the RSE and scope, synthetic Rubin files, settings, registry reads."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from butler_registry import open_registry
from deploy.local.rucio_env import RucioEnv
from ingestd.bench._sidecars import HSC_DETECTORS, hsc_calexp_sidecar
from ingestd.config import IngestdSettings, load_settings

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
RSE = "FRDF_TEST_DISK"
SCOPE = "dp2_prep"
RUCIO_PREFIX = "root://xrd5:1094//rucio/"
DETECTORS = HSC_DETECTORS
"""HSC detectors in prep.yaml: distinct data IDs per run."""


def sidecar(dataset_id: uuid.UUID, detector: int, run: str) -> str:
    """A calexp DatasetRef of HSC visit 330 (whose dimension records prep.yaml holds)."""
    return hsc_calexp_sidecar(dataset_id, detector, run)


def rubin_files(count: int, *, seed: str = "backfill", scope: str = SCOPE) -> list[dict[str, Any]]:
    """``count`` data products as Rucio replica entries (``add_replicas`` input) with their metadata."""
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, seed)
    files = []
    for index in range(count):
        dataset_id = uuid.uuid5(namespace, str(index))
        run = f"tests/{seed}/run{index // DETECTORS:04d}"
        files.append(
            {
                "scope": scope,
                "name": f"{seed}/calexp_{index:07d}_{dataset_id.hex[:8]}.fits",
                "bytes": 1000 + index,
                "adler32": f"{index + 1:08x}",
                "meta": {
                    "rubin_butler": "data_product",
                    "rubin_sidecar": sidecar(dataset_id, index % DETECTORS, run),
                },
            }
        )
    return files


def dataset_id_of(entry: dict[str, Any]) -> uuid.UUID:
    """The dataset id a replica entry's sidecar carries."""
    return uuid.UUID(json.loads(entry["meta"]["rubin_sidecar"])["id"])


@dataclass
class BackfillBed:
    """One test's Rucio server, registry, storage folder and working folder."""

    rucio: RucioEnv
    server: str
    client_config: Path
    registry_url: str
    storage: Path
    workdir: Path

    def config(self, **sections: Any) -> dict[str, Any]:
        """Settings as plain data: the site map maps the RSE's root:// PFNs to the storage folder."""
        data: dict[str, Any] = {
            "site": {
                "facilities": [
                    {
                        "name": "FrDF",
                        "rses": ["FRDF_.*"],
                        "prefixes": {RSE: {"rucio_prefix": RUCIO_PREFIX, "fs_prefix": str(self.storage)}},
                    }
                ]
            },
            "registry": {"url": self.registry_url},
            "dead_letters": {"file": str(self.workdir / "dead-letters.jsonl")},
            "batching": {"max_events": 100, "max_wait_s": 0.2},
            "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 2},
            "http": {"enabled": False},
            "logging": {"format": "json", "level": "WARNING"},
            "rucio": {"chunk_size": 50, "max_requests_per_s": 200},
        }
        data.update(sections)
        return data

    def write_config(self, name: str = "ingestd.yaml", **sections: Any) -> Path:
        """Write :meth:`config` as YAML; return its path."""
        path = self.workdir / name
        path.write_text(yaml.safe_dump(self.config(**sections), sort_keys=False))
        return path

    def settings(self, **sections: Any) -> IngestdSettings:
        """Validated settings, through a YAML file as an operator gives them."""
        return load_settings(self.write_config(**sections))

    def registered(self) -> dict[uuid.UUID, tuple[str, str | None, str | None]]:
        """Every dataset of the registry: id -> (file path, provenance source, Rucio name)."""
        registry = open_registry(self.registry_url)
        try:
            with registry.engine.connect() as connection:
                rows = connection.execute(
                    sa.text(
                        "SELECT d.id, f.path, d.source, d.rucio_name FROM dataset d "
                        "JOIN dataset_file f ON f.dataset_id = d.id"
                    )
                ).all()
        finally:
            registry.close()
        return {uuid.UUID(str(row[0])): (row[1], row[2], row[3]) for row in rows}
