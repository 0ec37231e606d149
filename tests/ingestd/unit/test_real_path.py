"""``existing_real_path`` answers exactly as ``realpath`` after ``lexists``, in every odd case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingestd.mapping import existing_real_path


def _reference(path: str) -> str | None:
    return os.path.realpath(path) if os.path.lexists(path) else None


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


@pytest.mark.parametrize(
    "relative",
    [
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
    ],
)
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
