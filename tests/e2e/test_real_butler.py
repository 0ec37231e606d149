"""The generated files are what the real Butler reads: exports, zips and sidecars, on lsst-daf-butler itself.

The anchor path ingests the same events with ``Butler.import_``, ``Butler.ingest_zip``
and ``DatasetRef.from_json`` + ``Butler.ingest``; this proves the generator's output is
valid for it (a SQLite repository, no server needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.e2e import Campaign
from ingestd.e2e._campaign import STORAGE_CLASSES
from ingestd.work import ButlerKind

pytestmark = pytest.mark.butler


def test_the_real_butler_accepts_every_kind(tmp_path: Path) -> None:
    from lsst.daf.butler import Butler, DatasetRef, FileDataset

    from butler_registry.daf import create_butler_repo

    campaign = Campaign(storage=tmp_path / "storage", events=400, seed=8, tag="b", detectors=8)
    bootstrap = campaign.write_bootstrap_export(tmp_path / "bootstrap.yaml")
    events = [e for e in campaign.events_iter() if e.facility == "FrDF"]
    create_butler_repo(
        tmp_path / "repo",
        formatters=dict.fromkeys(STORAGE_CLASSES, "lsst.daf.butler.formatters.json.JsonFormatter"),
    )
    butler = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    try:
        butler.import_(filename=str(bootstrap))
        files = []
        for event in events:
            path = str(campaign.local_path(event.rse, event.scope, event.name))
            if event.kind is ButlerKind.dim_file:
                butler.import_(filename=path)
            elif event.kind is ButlerKind.zip_file:
                butler.ingest_zip(path, transfer="direct")
            else:
                ref = DatasetRef.from_json(event.payload["rubin_sidecar"], universe=butler.dimensions)
                butler.registry.registerDatasetType(ref.datasetType)
                butler.registry.registerRun(ref.run)
                files.append(FileDataset(path, ref))
        butler.ingest(*files, transfer="direct")
        expected = {i for e in events for i in e.dataset_ids}
        found = {ref.id for ref in butler.registry.queryDatasets(..., collections=...)}
        assert found == expected
        exposures = {r.id for r in butler.registry.queryDimensionRecords("exposure")}
        new = {int(e.dimension_key.rsplit("/", 1)[1]) for e in events if e.dimension_key}
        assert new
        assert new <= exposures
    finally:
        butler.close()
