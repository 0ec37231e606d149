"""``existing_real_path`` answers exactly as ``realpath`` after ``lexists``, in every odd case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingestd.mapping import REAL_FOLDER_TTL_S, UrlMapper, existing_real_path


def _reference(path: str) -> str | None:
    return os.path.realpath(path) if os.path.lexists(path) else None


ODD_PATHS = [
    "a/b/file.fits",
    "link-to-file.fits",
    "relative-link.fits",
    "folder-link/b/file.fits",
    "escape/secret.fits",
    "escape/absent.fits",
    "dangling.fits",
    "loop-1",
    "loop-1/below.fits",
    "chain.fits",
    "absent/file.fits",
    "a/b/file.fits/not-a-folder",
    "a/b",
    "a/b/../b/file.fits",
    "folder-link/../a/b/file.fits",
    "nul\x00byte.fits",
]
"""Paths below the tree: plain, through links of every kind, absent, dangling, looping, not normalised."""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files, links to files and folders, relative and absolute, dangling, looping, unsearchable."""
    root = tmp_path / "storage"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file.fits").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.fits").write_text("s")
    (root / "link-to-file.fits").symlink_to(root / "a" / "b" / "file.fits")
    (root / "relative-link.fits").symlink_to(Path("a") / "b" / ".." / "b" / "file.fits")
    (root / "folder-link").symlink_to(root / "a")
    (root / "escape").symlink_to(outside)
    (root / "dangling.fits").symlink_to(outside / "absent.fits")
    (root / "loop-1").symlink_to(root / "loop-2")
    (root / "loop-2").symlink_to(root / "loop-1")
    (root / "chain.fits").symlink_to(root / "link-to-file.fits")
    return root


@pytest.mark.parametrize("relative", ODD_PATHS)
def test_same_answer_as_realpath_after_lexists(tree: Path, relative: str) -> None:
    path = f"{tree}/{relative}"
    assert existing_real_path(path) == _reference(path)


def test_unsearchable_folder(tree: Path) -> None:
    locked = tree / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "file.fits").write_text("x")
    locked.chmod(0)
    try:
        path = str(locked / "inner" / "file.fits")
        assert existing_real_path(path) == _reference(path)
    finally:
        locked.chmod(0o755)


def test_no_descriptor_is_left_open(tree: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        existing_real_path(str(tree / "link-to-file.fits"))
        existing_real_path(str(tree / "absent.fits"))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("relative", ODD_PATHS)
def test_the_mappers_folder_cache_gives_the_same_answer(tree: Path, relative: str) -> None:
    """The mapper's check remembers folders; first and second lookups both match ``realpath``."""
    mapper = UrlMapper()
    path = f"{tree}/{relative}"
    assert mapper._real_path(path) == _reference(path)
    assert mapper._real_path(path) == _reference(path)


def test_a_folder_swapped_for_a_link_is_seen_once_its_entry_expires(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapper = UrlMapper()
    now = [1000.0]
    monkeypatch.setattr("ingestd.mapping.time.monotonic", lambda: now[0])
    path = f"{tree}/a/b/file.fits"
    assert mapper._real_path(path) == path
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "b").mkdir(parents=True)
    (elsewhere / "b" / "file.fits").write_text("y")
    (tree / "a").rename(tmp_path / "old-a")
    (tree / "a").symlink_to(elsewhere)
    assert mapper._real_path(path) == path  # still trusted: within REAL_FOLDER_TTL_S
    now[0] += REAL_FOLDER_TTL_S + 0.1
    assert mapper._real_path(path) == f"{elsewhere}/b/file.fits"
