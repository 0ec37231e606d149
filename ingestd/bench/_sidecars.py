"""Synthetic DatasetRef sidecars the benchmarks (and tests) generate by the thousand.

HSC calexps of one visit: the bundled samples' dimension export holds that visit's
records and 112 detectors, so every (detector, run) pair is a distinct, registrable
data ID without importing anything else.
"""

from __future__ import annotations

import json
import uuid

__all__ = ["HSC_DETECTORS", "hsc_calexp_sidecar"]

HSC_DETECTORS = 112
"""Detectors of HSC in the bundled dimension records."""


def hsc_calexp_sidecar(dataset_id: uuid.UUID, detector: int, run: str, *, visit: int = 330) -> str:
    """The compact ``rubin_sidecar`` JSON of a calexp of HSC ``visit`` (band y) on ``detector`` in ``run``."""
    return json.dumps(
        {
            "id": str(dataset_id),
            "datasetType": {
                "name": "calexp",
                "storageClass": "ExposureF",
                "dimensions": ["instrument", "detector", "visit"],
            },
            "dataId": {
                "dataId": {
                    "instrument": "HSC",
                    "detector": detector,
                    "visit": visit,
                    "band": "y",
                    "physical_filter": "HSC-Y",
                }
            },
            "run": run,
        },
        separators=(",", ":"),
    )
