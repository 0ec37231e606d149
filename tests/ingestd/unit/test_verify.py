"""File verification: existence, size, adler32 and md5 as the transfer announced."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from ingestd.verify import (
    FileCheckStatus,
    FileExpectation,
    FileVerifier,
    adler32_hex,
    check_file,
    verdict,
)


def _file(
    tmp_path: Path, content: bytes = b"rubin" * 1000, name: str = "f.fits"
) -> tuple[Path, int, str, str]:
    path = tmp_path / name
    path.write_bytes(content)
    return (
        path,
        len(content),
        f"{zlib.adler32(content) & 0xFFFFFFFF:08x}",
        hashlib.md5(content, usedforsecurity=False).hexdigest(),
    )


def test_ok_with_both_checksums(tmp_path: Path) -> None:
    path, size, adler, md5 = _file(tmp_path)
    check = check_file(path, size=size, adler32=adler, md5=md5)
    assert check.ok
    assert check.status is FileCheckStatus.ok
    assert (check.size, check.adler32, check.md5) == (size, adler, md5)
    assert check.reason is None


def test_streaming_adler32_over_many_buffers(tmp_path: Path) -> None:
    content = os.urandom(1_000_003)
    path, size, adler, md5 = _file(tmp_path, content)
    check = check_file(path, size=size, adler32=adler, md5=md5, buffer_bytes=4096)
    assert check.ok
    assert check.adler32 == adler
    assert check.md5 == md5


def test_adler32_hex_formatting() -> None:
    assert adler32_hex(1) == "00000001"
    assert adler32_hex(zlib.adler32(b"")) == "00000001"
    assert adler32_hex(0xDEADBEEF) == "deadbeef"


def test_announced_adler32_without_leading_zeros_and_upper_case(tmp_path: Path) -> None:
    path, size, adler, _ = _file(tmp_path, b"")
    assert adler == "00000001"
    assert check_file(path, size=size, adler32="1").ok
    path, size, adler, _ = _file(tmp_path, b"x" * 100, name="g")
    assert check_file(path, size=size, adler32=adler.upper()).ok


def test_not_visible(tmp_path: Path) -> None:
    check = check_file(tmp_path / "absent.fits", size=10, adler32="00000001")
    assert check.status is FileCheckStatus.not_visible
    assert check.may_still_arrive
    assert check.status.error_class == "file_not_visible"


def test_parent_is_a_file(tmp_path: Path) -> None:
    path, *_ = _file(tmp_path)
    check = check_file(path / "child", size=None, adler32=None)
    assert check.status is FileCheckStatus.unreadable
    assert not check.may_still_arrive


def test_smaller_file_may_still_be_arriving(tmp_path: Path) -> None:
    path, size, adler, _ = _file(tmp_path)
    check = check_file(path, size=size + 100, adler32=adler)
    assert check.status is FileCheckStatus.size_mismatch
    assert check.may_still_arrive
    assert f"{size} bytes" in (check.reason or "")
    assert str(size + 100) in (check.reason or "")


def test_larger_file_is_a_plain_mismatch(tmp_path: Path) -> None:
    path, size, adler, _ = _file(tmp_path)
    check = check_file(path, size=size - 1, adler32=adler)
    assert check.status is FileCheckStatus.size_mismatch
    assert not check.may_still_arrive


def test_checksum_mismatches(tmp_path: Path) -> None:
    path, size, adler, _md5 = _file(tmp_path)
    bad_adler = check_file(path, size=size, adler32="00000002")
    assert bad_adler.status is FileCheckStatus.checksum_mismatch
    assert adler in (bad_adler.reason or "")
    assert "00000002" in (bad_adler.reason or "")
    bad_md5 = check_file(path, size=size, adler32=adler, md5="0" * 32)
    assert bad_md5.status is FileCheckStatus.checksum_mismatch
    assert "md5" in (bad_md5.reason or "")
    assert bad_md5.status.error_class == "checksum_mismatch"


def test_checksum_off_only_stats(tmp_path: Path) -> None:
    path, size, _, _ = _file(tmp_path)
    check = check_file(path, size=size, adler32="00000002", checksum=False)
    assert check.ok
    assert check.adler32 is None


def test_nothing_announced_is_ok_when_present(tmp_path: Path) -> None:
    path, *_ = _file(tmp_path)
    assert check_file(path, size=None, adler32=None).ok


def test_directory_is_unreadable(tmp_path: Path) -> None:
    check = check_file(tmp_path, size=None, adler32=None)
    assert check.status is FileCheckStatus.unreadable
    assert "directory" in (check.reason or "")
    assert check.status.error_class == "file_unreadable"


def test_symlink_leaving_the_prefix(tmp_path: Path) -> None:
    root, outside = tmp_path / "rucio", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    target, size, adler, _ = _file(outside)
    (root / "f.fits").symlink_to(target)
    check = check_file(root / "f.fits", size=size, adler32=adler, within=root)
    assert check.status is FileCheckStatus.outside_prefix
    assert check.status.error_class == "path_refused"
    inside, size, adler, _ = _file(root, name="g.fits")
    (root / "alias.fits").symlink_to(inside)
    assert check_file(root / "alias.fits", size=size, adler32=adler, within=root).ok


def test_verifier_checks_many_in_order(tmp_path: Path) -> None:
    files = [_file(tmp_path, bytes([index]) * (index + 1), name=f"f{index}") for index in range(12)]
    items = [FileExpectation(path, size, adler) for path, size, adler, _ in files]
    items.insert(5, FileExpectation(tmp_path / "missing", 1, "00000001"))
    with FileVerifier(workers=3) as verifier:
        checks = verifier.check_many(items)
    assert [check.path for check in checks] == [item.path for item in items]
    assert [check.status for check in checks].count(FileCheckStatus.ok) == 12
    assert checks[5].status is FileCheckStatus.not_visible
    single = FileVerifier(workers=1, checksum=False)
    assert single.check(items[0]).ok
    single.close()
    with pytest.raises(ValueError, match="workers"):
        FileVerifier(workers=0)


@pytest.mark.parametrize(
    ("waited", "action"),
    [(0.0, "park"), (59.0, "park"), (60.0, "reject"), (3600.0, "reject")],
)
def test_verdict_parks_then_rejects_a_file_not_yet_visible(
    tmp_path: Path, waited: float, action: str
) -> None:
    check = check_file(tmp_path / "absent", size=1, adler32=None)
    decision = verdict(check, waited_s=waited, not_visible_timeout_s=60.0)
    assert decision.action == action
    assert decision.error_class == "file_not_visible"
    if action == "reject":
        assert "gave up after waiting" in (decision.reason or "")


def test_verdict_never_parks_a_permanent_problem(tmp_path: Path) -> None:
    path, size, _, _ = _file(tmp_path)
    check = check_file(path, size=size, adler32="00000002")
    decision = verdict(check, waited_s=0.0, not_visible_timeout_s=3600.0)
    assert decision.action == "reject"
    assert decision.error_class == "checksum_mismatch"
    assert (
        verdict(check_file(path, size=size, adler32=None), waited_s=0, not_visible_timeout_s=1).action
        == "register"
    )
