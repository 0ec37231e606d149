"""``ingestd monitoring``: install against the real OpenSearch, check, print, docs."""

from __future__ import annotations

import json

import pytest
from opensearchpy import OpenSearch

from ingestd.cli import main


@pytest.mark.opensearch
def test_install_is_idempotent(
    opensearch_url: str, index_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ingestd monitoring install` creates the template, then finds it unchanged."""
    argv = ["monitoring", "install", "--url", opensearch_url, "--index-prefix", index_prefix]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["result"] == "created"
    assert first["index_patterns"] == [f"{index_prefix}-*"]
    assert first["dashboard_problems"] == []
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "unchanged"
    client = OpenSearch(hosts=[opensearch_url])
    assert client.indices.exists_index_template(name=index_prefix)
    client.close()


def test_install_without_url_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No URL anywhere: exit 2 with the setting to fix."""
    monkeypatch.delenv("INGESTD_OPENSEARCH_URLS", raising=False)
    assert main(["monitoring", "install"]) == 2
    assert "INGESTD_OPENSEARCH_URLS" in capsys.readouterr().err


def test_install_unreachable_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    """OpenSearch not answering: exit 1 with the reason, no traceback."""
    assert main(["monitoring", "install", "--url", "http://127.0.0.1:9"]) == 1
    assert "could not install the index template: ConnectionError" in capsys.readouterr().err


def test_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """`ingestd monitoring check` (what CI can run): dashboards, docs, promtool check and test rules."""
    assert main(["monitoring", "check"]) == 0
    out = capsys.readouterr().out
    assert "check rules: ok" in out
    assert "test rules: ok" in out


def test_print_saved_objects_for_a_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """Sites with their own index prefix print saved objects over it."""
    assert (
        main(["monitoring", "dashboards", "--print", "saved-objects", "--index-prefix", "frdf-events"]) == 0
    )
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["attributes"]["title"] == "frdf-events-*"
