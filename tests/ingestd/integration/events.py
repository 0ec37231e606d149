"""Build transfer-done events in the real HermesK format (see tests/data/samples) for the engine tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestd.bench._sidecars import HSC_DETECTORS, hsc_calexp_sidecar

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
RUCIO_PREFIX = "root://xrd5:1098//rucio/"
"""dst-url prefix of the samples (RSE XRD5)."""


def sample(name: str) -> dict[str, Any]:
    """A shared sample message as a dict."""
    result: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return result


def sample_bytes(name: str) -> bytes:
    """A shared sample message, bytes unchanged."""
    return (SAMPLES / name).read_bytes().strip()


def encode(message: dict[str, Any]) -> bytes:
    """Serialise like HermesK (compact JSON)."""
    return json.dumps(message, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SyntheticDataset:
    """One synthetic data product: a calexp of HSC visit 330 (whose records prep.yaml has)."""

    dataset_id: uuid.UUID
    detector: int
    run: str

    def event(self, *, rucio_prefix: str = RUCIO_PREFIX) -> bytes:
        """The transfer-done message announcing this dataset."""
        message = sample("message440.json")
        payload = message["payload"]
        name = f"synthetic/{self.run.replace('/', '_')}/calexp_{self.detector}_{self.dataset_id.hex[:8]}.fits"
        payload["name"] = name
        payload["dst-url"] = rucio_prefix + name
        payload["transfer-id"] = str(uuid.uuid5(self.dataset_id, "transfer"))
        payload["file-size"] = payload["bytes"] = 1000 + self.detector
        payload["rubin_sidecar"] = hsc_calexp_sidecar(self.dataset_id, self.detector, self.run)
        return encode(message)


DETECTORS = HSC_DETECTORS
"""Detectors of HSC in prep.yaml (0..111): distinct data IDs per run."""


def synthetic_datasets(count: int, *, seed: str = "ingestd-tests") -> Iterator[SyntheticDataset]:
    """``count`` distinct datasets (ids deterministic per seed): DETECTORS per run, as many runs as needed."""
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, seed)
    for index in range(count):
        run = f"tests/{seed}/run{index // DETECTORS:04d}"
        yield SyntheticDataset(uuid.uuid5(namespace, str(index)), index % DETECTORS, run)


def dim_event(path_in_prefix: str = "prep.yaml", *, rucio_prefix: str = RUCIO_PREFIX) -> bytes:
    """A dim_file event pointing at ``<fs_prefix>/<path_in_prefix>``."""
    message = sample("dim_message.json")
    message["payload"]["dst-url"] = rucio_prefix + path_in_prefix
    return encode(message)


def malformed_events() -> list[tuple[str, bytes]]:
    """One bad record of each kind the issue names, with the error class each must get.

    Truncated JSON, the shared ``nosidecar.json`` (``rubin_butler: 1``), a data
    product without its sidecar, wrong types, an unknown kind, a path escaping its
    prefix, a payload of several MB.
    """
    good = sample("message440.json")

    def changed(**payload: Any) -> bytes:
        message = json.loads(json.dumps(good))
        message["payload"].update(payload)
        return encode(message)

    text = sample_bytes("message440.json")
    return [
        ("invalid_json", text[: len(text) // 2]),
        ("unknown_kind", sample_bytes("nosidecar.json")),
        ("missing_sidecar", changed(rubin_sidecar="")),
        ("invalid_payload", changed(**{"file-size": "lots"})),
        ("unknown_kind", changed(rubin_butler="hologram")),
        ("path_refused", changed(**{"dst-url": RUCIO_PREFIX + "../../../etc/passwd"})),
        ("too_large", changed(reason="x" * (3 * 1_048_576))),
    ]
