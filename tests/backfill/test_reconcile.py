"""``ingestd reconcile`` on a real Rucio server and PostgreSQL: one difference each way, found and fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from butler_registry import open_registry
from ingestd.backfill import BackfillRequest, reconcile, run_backfill
from ingestd.cli import main
from ingestd.cli.commands.reconcile import DIFFERENCES_FOUND
from ingestd.rucio_client import RucioCatalogue

from .support import RSE, SCOPE, BackfillBed, dataset_id_of, rubin_files

pytestmark = [pytest.mark.postgres]


def test_reconcile_reports_a_replica_the_registry_lacks_and_a_dataset_rucio_lacks(
    bed: BackfillBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = rubin_files(41, seed="reconcile")
    late, gone = files[-1], files[0]
    bed.rucio.add_files_with_metadata(RSE, files[:-1])
    settings = bed.settings()
    request = BackfillRequest(rse=RSE, scopes=(SCOPE,))
    assert (
        run_backfill(settings, settings.rucio, request, state_dir=tmp_path / "state", show_progress=False)
        == 0
    )
    capsys.readouterr()

    bed.rucio.add_files_with_metadata(RSE, [late])  # arrived while the daemon was down: not registered
    bed.rucio.delete_replicas(RSE, [(SCOPE, gone["name"])])  # Rucio no longer has it at the RSE

    with open_registry(bed.registry_url) as registry:
        report = reconcile(
            settings, RucioCatalogue(settings.rucio), registry, request, workdir=tmp_path / "r"
        )
    assert report.local_roots == (str(bed.storage),)
    assert (report.rucio_files, report.registry_datasets) == (40, 40)
    assert (report.missing_in_registry, report.missing_in_rucio) == (1, 1)
    lacks_registry = [d for d in report.examples if d.missing_in == "registry"]
    lacks_rucio = [d for d in report.examples if d.missing_in == "rucio"]
    assert [(d.did, d.dataset_id) for d in lacks_registry] == [
        (f"{SCOPE}:{late['name']}", str(dataset_id_of(late)))
    ]
    assert [d.dataset_id for d in lacks_rucio] == [str(dataset_id_of(gone))]
    assert str(lacks_rucio[0].path).endswith(gone["name"])
    assert len(bed.registered()) == 40  # read-only

    config = str(bed.write_config())
    base = ["reconcile", "--rse", RSE, "--scope", SCOPE, "--config", config, "--json"]
    assert main(base) == DIFFERENCES_FOUND
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["missing_in_registry"], printed["missing_in_rucio"]) == (1, 1)

    # Asked to, it backfills exactly what the registry lacks; what Rucio lacks is only reported.
    assert main([*base, "--backfill"]) == 0
    backfilled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (backfilled["outcomes"]["registered"], backfilled["asked"]) == (1, 1)
    assert dataset_id_of(late) in bed.registered()
    assert main(base) == DIFFERENCES_FOUND
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (after["missing_in_registry"], after["missing_in_rucio"]) == (0, 1)
