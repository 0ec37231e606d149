"""``ingestd replay --from-rucio`` against a real Rucio server (REST API, rucio-clients) and PostgreSQL.

What the issue asks: the registry holds exactly the datasets whose files Rucio
has at the RSE; a second run changes nothing; a backfill killed half-way
(``kill -9``) and started again completes from its checkpoint without listing
again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ingestd.backfill import BackfillRequest, run_backfill

from .support import RSE, SCOPE, BackfillBed, dataset_id_of, rubin_files

pytestmark = [pytest.mark.postgres]


def _backfill(bed: BackfillBed, state_dir: Path, **request: Any) -> dict[str, Any]:
    settings = bed.settings()
    out = io.StringIO()
    code = run_backfill(
        settings,
        settings.rucio,
        BackfillRequest(rse=RSE, **request),
        state_dir=state_dir,
        show_progress=False,
        summary_json=True,
        out=out,
    )
    assert code == 0, out.getvalue()
    summary: dict[str, Any] = json.loads(out.getvalue())
    return summary


def test_registry_holds_exactly_the_replicas_at_the_rse_and_a_second_run_changes_nothing(
    bed: BackfillBed, tmp_path: Path
) -> None:
    here = rubin_files(240, seed="here")
    elsewhere = rubin_files(7, seed="elsewhere")
    bed.rucio.add_files_with_metadata(RSE, here)
    bed.rucio.add_files_with_metadata("OTHER_DISK", elsewhere)  # same scope, another RSE: not ours

    first = _backfill(bed, tmp_path / "state", scopes=(SCOPE,))

    registered = bed.registered()
    assert set(registered) == {dataset_id_of(entry) for entry in here}
    for entry in here:
        path, source, rucio_name = registered[dataset_id_of(entry)]
        assert (source, rucio_name) == ("rucio", entry["name"])
        assert path.startswith(str(bed.storage) + f"/{SCOPE}/")
        assert path.endswith("/" + entry["name"])
    assert first["outcomes"]["registered"] == 240
    assert sum(first["outcomes"].values()) == 240
    assert (first["listed"], first["at_rse"], first["not_at_rse"]) == (247, 240, 7)
    # Bulk calls: per chunk of 50 names one list_replicas and one get_metadata_bulk, plus the listing.
    assert first["rucio_requests"] <= 2 * (247 // 50 + 1) + 2

    second = _backfill(bed, tmp_path / "state", scopes=(SCOPE,))
    assert second["outcomes"]["already_present"] == 240
    assert sum(second["outcomes"].values()) == 240
    assert second["resumed_after"] == 0  # the finished state file was started afresh
    assert bed.registered() == registered


def test_files_without_metadata_are_dead_lettered_and_since_and_dataset_narrow_the_listing(
    bed: BackfillBed, tmp_path: Path
) -> None:
    files = rubin_files(30, seed="narrow")
    bare = {"scope": SCOPE, "name": "narrow/not-a-butler-file.txt", "bytes": 3, "adler32": "0000000a"}
    bed.rucio.add_files_with_metadata(RSE, [*files, bare])

    summary = _backfill(bed, tmp_path / "state", scopes=(SCOPE,))
    assert summary["outcomes"]["registered"] == 30
    assert summary["outcomes"]["rejected"] == 1  # the daemon's own verdict: missing_kind, dead-lettered
    letters = [json.loads(line) for line in (bed.workdir / "dead-letters.jsonl").read_text().splitlines()]
    assert [letter["headers"]["ingestd.error_class"] for letter in letters] == ["missing_kind"]
    assert letters[0]["headers"]["ingestd.source.kind"] == "rucio"
    assert json.loads(letters[0]["value"])["payload"]["name"] == bare["name"]

    # --since: only replicas updated since then (none, a minute from now).
    later = _backfill(bed, tmp_path / "state", scopes=(SCOPE,), since=_in_a_minute())
    assert (later["at_rse"], sum(later["outcomes"].values())) == (0, 0)

    # --dataset: only the files attached to it.
    bed.rucio.run(
        """
        from rucio.common.types import InternalAccount, InternalScope
        from rucio.core.did import add_did, attach_dids
        from rucio.db.sqla.constants import DIDType
        scope = InternalScope(data["scope"])
        add_did(scope=scope, name="narrow-ds", did_type=DIDType.DATASET, account=InternalAccount("root"))
        attach_dids(scope=scope, name="narrow-ds", dids=[{"scope": scope, "name": n} for n in data["names"]],
                    account=InternalAccount("root"))
        """,
        {"scope": SCOPE, "names": [entry["name"] for entry in files[:4]]},
    )
    only = _backfill(bed, tmp_path / "state", dataset=f"{SCOPE}:narrow-ds")
    assert (only["listed"], only["outcomes"]["already_present"]) == (4, 4)


def _in_a_minute() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(minutes=1)


def _checkpoint(state_file: Path) -> tuple[int, int]:
    """(acknowledged position, listed files) read from the state file, as another process sees it."""
    if not state_file.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)
    try:
        acknowledged = db.execute("SELECT value FROM state WHERE key = 'acknowledged'").fetchone()
        listed = db.execute("SELECT count(*) FROM did").fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        db.close()
    return int(acknowledged[0]) if acknowledged else 0, int(listed[0])


def test_a_backfill_killed_half_way_completes_from_its_checkpoint_without_listing_again(
    bed: BackfillBed, tmp_path: Path
) -> None:
    files = rubin_files(1_500, seed="killed")
    bed.rucio.add_files_with_metadata(RSE, files)
    state_dir = tmp_path / "state"
    # Slowed to 8 requests/s so that the kill lands half-way (chunks of 50: 60 requests in all).
    slow = bed.write_config("slow.yaml", rucio={"chunk_size": 50, "max_requests_per_s": 8})

    def command(config: Path) -> list[str]:
        return [
            sys.executable, "-m", "ingestd", "replay", "--from-rucio", "--rse", RSE, "--scope", SCOPE,
            "--config", str(config), "--state-dir", str(state_dir), "--json", "--no-progress",
        ]  # fmt: skip

    env = {**os.environ, "RUCIO_CONFIG": str(bed.client_config)}
    state_file = BackfillRequest(rse=RSE, scopes=(SCOPE,)).state_file(state_dir)
    process = subprocess.Popen(command(slow), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            acknowledged, listed = _checkpoint(state_file)
            if acknowledged >= 500:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    checkpoint, listed = _checkpoint(state_file)
    assert listed == 1_500
    assert 500 <= checkpoint < 1_500, checkpoint
    before = len(bed.registered())
    assert checkpoint <= before < 1_500  # everything up to the checkpoint is committed, not all of it

    rerun = subprocess.run(
        command(bed.write_config()),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["resumed_after"] == checkpoint
    assert summary["relisted_units"] == 0  # the listing was kept, not asked for again
    assert summary["asked"] == 1_500 - checkpoint
    assert summary["outcomes"]["registered"] == 1_500 - before
    assert summary["outcomes"]["already_present"] == before - checkpoint  # the batch in flight at the kill
    assert set(bed.registered()) == {dataset_id_of(entry) for entry in files}
