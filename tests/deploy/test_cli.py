"""``ingestd site check|render|show`` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestd.cli import main

SITES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sites"


def test_check_lists_what_to_provision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "check", str(SITES_DIR / "frdf.yaml"), "--env", "prod"]) == 0
    out = capsys.readouterr().out
    assert "site frdf-prod from base.yaml < frdf.yaml < overlays/prod.yaml" in out
    assert "secret registry-password: password of PostgreSQL role ingestd on database butler_frdf" in out
    assert "/etc/ingestd/frdf-prod/credentials/registry-password" in out
    assert "Secret ingestd-frdf-registry, key password" in out
    assert out.rstrip().endswith("ok")


def test_check_json_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text("daemon: {config: {batching: {max_events: 0}}}\n")
    code = main(["site", "check", str(SITES_DIR / "ukdf.yaml"), "--overlay", str(overlay), "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert any("batching.max_events" in problem for problem in report["problems"])


def test_invalid_site_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text("daemon: {replicas: -1}\n")
    assert main(["site", "check", str(SITES_DIR / "ukdf.yaml"), "--overlay", str(overlay)]) == 2
    assert "o.yaml: daemon.replicas" in capsys.readouterr().err


def test_render_writes_and_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "site",
                "render",
                str(SITES_DIR / "frdf.yaml"),
                "--env",
                "dev",
                "--target",
                "systemd",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "systemd" / "ingestd-mirror@.service").is_file()
    assert (out / "install.sh").stat().st_mode & 0o111
    capsys.readouterr()
    overlay = tmp_path / "no-mirror.yaml"
    overlay.write_text("mirror: {enabled: false}\n")
    args = ["site", "render", str(SITES_DIR / "frdf.yaml"), "--env", "dev", "--overlay", str(overlay)]
    assert main([*args, "--target", "systemd", "-o", str(out)]) == 0
    assert "ingestd-mirror@.service" in capsys.readouterr().err, (
        "the mirror unit of the earlier rendering is stale"
    )


def test_render_refuses_what_a_target_cannot_express(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["site", "render", str(SITES_DIR / "usdf.yaml"), "--target", "mm2", "-o", str(tmp_path)]) == 2
    assert "needs a facility" in capsys.readouterr().err


def test_show_merged_and_origins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "show", str(SITES_DIR / "ukdf.yaml"), "--env", "dev"]) == 0
    merged = capsys.readouterr().out
    assert "127.0.0.1:29092" in merged
    assert "extends" not in merged
    assert main(["site", "show", str(SITES_DIR / "ukdf.yaml"), "--env", "dev", "--origins"]) == 0
    origins = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith("local_kafka.bootstrap_servers.0: ") and "dev.yaml" in line for line in origins
    )
    assert any(line.startswith("mirror.policy: ") and line.endswith("ukdf.yaml") for line in origins)
