"""URL → local path: anchored at the prefix, normalised, never leaving the local prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ingestd.events import RejectClass
from ingestd.mapping import MappingConfigurationError, MappingRefused, PrefixRule, UrlMapper
from ingestd.sitemap import Facility, RsePrefix, SiteMap

from .support import Prefix


def _mapper(**options: Any) -> UrlMapper:
    topics = {
        "XRD1-test": Prefix("root://xrd1:1094//rucio", "file:///rucio0"),
        "XRD2-test": Prefix("root://xrd2:1095//rucio/", "/rucio1/"),
    }
    return UrlMapper(topics, {"XRD3": Prefix("davs://xrd3:1096/rucio/", "/rucio3")}, **options)


def _refused(mapper: UrlMapper, url: str, **where: str) -> MappingRefused:
    with pytest.raises(MappingRefused) as caught:
        mapper.map(url, **where)
    return caught.value


def test_ctrl_ingestd_cases() -> None:
    mapper = _mapper()
    assert mapper.map("root://xrd1:1094//rucio/test/28/27/test", topic="XRD1-test") == Path(
        "/rucio0/test/28/27/test"
    )
    assert mapper.map("root://xrd2:1095//rucio/test/48/47/test", topic="XRD2-test") == Path(
        "/rucio1/test/48/47/test"
    )


def test_prefix_in_the_middle_is_not_replaced() -> None:
    mapper = _mapper()
    refused = _refused(mapper, "root://xrd9:1094//data/root://xrd1:1094//rucio/x.fits", topic="XRD1-test")
    assert refused.error_class is RejectClass.no_prefix
    assert "does not start with" in refused.reason
    refused = _refused(mapper, "/scratch/root://xrd1:1094//rucio/x.fits", topic="XRD1-test")
    assert refused.error_class is RejectClass.no_prefix


def test_prefix_matches_whole_segments_only() -> None:
    refused = _refused(_mapper(), "root://xrd1:1094//rucio2/test/x", topic="XRD1-test")
    assert refused.error_class is RejectClass.no_prefix


def test_other_host_or_port_does_not_match() -> None:
    assert (
        _refused(_mapper(), "root://xrd1:1095//rucio/x", topic="XRD1-test").error_class
        is RejectClass.no_prefix
    )
    assert (
        _refused(_mapper(), "root://xrd7:1094//rucio/x", topic="XRD1-test").error_class
        is RejectClass.no_prefix
    )
    assert (
        _refused(_mapper(), "davs://xrd1:1094//rucio/x", topic="XRD1-test").error_class
        is RejectClass.no_prefix
    )


@pytest.mark.parametrize(
    "url",
    [
        "root://xrd1:1094/rucio/test/x.fits",
        "root://xrd1:1094///rucio//test///x.fits",
        "root://xrd1:1094//rucio/./test/./x.fits",
        "ROOT://XRD1:1094//rucio/test/x.fits",
        "root://xrd1:1094//rucio/test/sub/../x.fits",
    ],
)
def test_urls_are_normalised(url: str) -> None:
    assert _mapper().map(url, topic="XRD1-test") == Path("/rucio0/test/x.fits")


@pytest.mark.parametrize(
    "url",
    [
        "root://xrd1:1094//rucio/../etc/passwd",
        "root://xrd1:1094//rucio/test/../../etc/passwd",
        "root://xrd1:1094//rucio/..",
        "root://xrd1:1094//rucio/test/../../rucio0x/f",
    ],
)
def test_dot_dot_escapes_are_refused(url: str) -> None:
    refused = _refused(_mapper(), url, topic="XRD1-test")
    assert refused.error_class is RejectClass.path_refused
    assert "outside '/rucio0'" in refused.reason


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("root://xrd1:1094//rucio/", "prefix folder itself"),
        ("root://xrd1:1094//rucio", "prefix folder itself"),
        ("root://xrd1:1094//rucio/x.fits?sig=1", "query"),
        ("root://xrd1:1094//rucio/x.fits#frag", "fragment"),
        ("root://xrd1:1094//rucio/x\x00.fits", "control"),
        ("root://xrd1:1094//rucio/x\n.fits", "control"),
    ],
)
def test_not_plain_file_urls_are_refused(url: str, words: str) -> None:
    refused = _refused(_mapper(), url, topic="XRD1-test")
    assert refused.error_class is RejectClass.path_refused
    assert words in refused.reason


def test_mirrored_topic_names_use_the_source_entry() -> None:
    mapper = _mapper()
    url = "root://xrd1:1094//rucio/test/x"
    assert mapper.map(url, topic="usdf.XRD1-test") == Path("/rucio0/test/x")
    assert mapper.canonical_topic("usdf.XRD1-test") == "XRD1-test"
    assert mapper.canonical_topic("usdf.") == "usdf."
    other = _mapper(source_aliases=("central", "usdf"))
    assert other.map(url, topic="central.XRD1-test") == Path("/rucio0/test/x")
    none = _mapper(source_aliases=())
    assert _refused(none, url, topic="usdf.XRD1-test").error_class is RejectClass.no_prefix


def test_exact_mirrored_entry_wins_over_the_alias() -> None:
    topics = {
        "XRD1-test": Prefix("root://xrd1:1094//rucio", "/a"),
        "usdf.XRD1-test": Prefix("root://xrd1:1094//rucio", "/b"),
    }
    mapper = UrlMapper(topics)
    assert mapper.map("root://xrd1:1094//rucio/x", topic="usdf.XRD1-test") == Path("/b/x")


def test_rse_table_and_fallback_order() -> None:
    mapper = _mapper()
    assert mapper.map("davs://xrd3:1096/rucio/f", rse="XRD3") == Path("/rucio3/f")
    # The topic's rule is tried first, then the RSE's.
    assert mapper.map("davs://xrd3:1096/rucio/f", topic="XRD1-test", rse="XRD3") == Path("/rucio3/f")
    refused = _refused(mapper, "davs://xrd4:1/rucio/f", topic="XRD1-test", rse="XRD3")
    assert "(topic XRD1-test)" in refused.reason
    assert "(RSE XRD3)" in refused.reason


def test_no_rule_at_all() -> None:
    refused = _refused(_mapper(), "root://xrd1:1094//rucio/x", topic="OTHER-test", rse="OTHER")
    assert refused.error_class is RejectClass.no_prefix
    assert "no URL prefix is configured" in refused.reason


def test_from_site_map() -> None:
    site = SiteMap(
        facilities=[
            Facility(
                name="FrDF",
                rses=["IN2P3_.*"],
                prefixes={
                    "IN2P3_BUTLER_DISK": RsePrefix(
                        rucio_prefix="root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/rucio/",
                        fs_prefix="/pnfs/in2p3.fr/data/lsst/rucio/",
                    )
                },
            )
        ]
    )
    mapper = UrlMapper.from_site(None, site)
    url = "root://ccxrootd.in2p3.fr:1094//pnfs/in2p3.fr/data/lsst/rucio/dp2_prep/ab/cd/f.fits"
    assert mapper.map(url, rse="IN2P3_BUTLER_DISK") == Path(
        "/pnfs/in2p3.fr/data/lsst/rucio/dp2_prep/ab/cd/f.fits"
    )


def test_empty_fs_prefix_keeps_the_url_path() -> None:
    mapper = UrlMapper({"T": Prefix("root://xrd1:1094//rucio/disks/xrd1", "")})
    assert mapper.map("root://xrd1:1094//rucio/disks/xrd1/test/f", topic="T") == Path(
        "/rucio/disks/xrd1/test/f"
    )


def test_posix_and_file_url_rucio_prefixes() -> None:
    mapper = UrlMapper(
        rse_prefixes={
            "P": Prefix("/storage/rucio/", "/mnt/rucio"),
            "F": Prefix("file:///storage/rucio", "/mnt/f"),
        }
    )
    assert mapper.map("/storage/rucio/a/b", rse="P") == Path("/mnt/rucio/a/b")
    assert mapper.map("file:///storage/rucio/a/b", rse="F") == Path("/mnt/f/a/b")


@pytest.mark.parametrize(
    ("rucio", "fs", "words"),
    [
        ("root://h//rucio", "relative/path", "absolute"),
        ("root://h//rucio", "/", "file-system root"),
        ("root://h//rucio", "file://otherhost/data", "another host"),
        ("", "/data", "empty"),
        ("relative/prefix", "/data", "neither a URL nor an absolute path"),
        ("root://h//rucio/../x", "/data", "'..'"),
        ("root://h//rucio?x=1", "/data", "query"),
    ],
)
def test_unusable_prefix_pairs(rucio: str, fs: str, words: str) -> None:
    with pytest.raises(MappingConfigurationError, match=words.replace("(", r"\(")) as caught:
        PrefixRule(rucio, fs, "topic T")
    assert "topic T" in str(caught.value)


def test_percent_decoding_is_off_by_default() -> None:
    url = "root://xrd1:1094//rucio/a%20b%2F..%2F..%2Fetc"
    assert _mapper().map(url, topic="XRD1-test") == Path("/rucio0/a%20b%2F..%2F..%2Fetc")
    decoding = _mapper(percent_decode=True)
    assert decoding.map("root://xrd1:1094//rucio/a%20b", topic="XRD1-test") == Path("/rucio0/a b")
    refused = _refused(decoding, url, topic="XRD1-test")
    assert refused.error_class is RejectClass.path_refused
    assert "separator" in refused.reason


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "rucio", tmp_path / "secret"
    (root / "test").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_text("x")
    (root / "test" / "link").symlink_to(outside)
    (root / "test" / "file.fits").write_text("data")
    (root / "test" / "alias.fits").symlink_to(root / "test" / "file.fits")
    mapper = UrlMapper({"T": Prefix("root://h//rucio", str(root))})
    assert mapper.map("root://h//rucio/test/file.fits", topic="T") == root / "test" / "file.fits"
    assert mapper.map("root://h//rucio/test/alias.fits", topic="T") == root / "test" / "alias.fits"
    refused = _refused(mapper, "root://h//rucio/test/link/passwd", topic="T")
    assert refused.error_class is RejectClass.path_refused
    assert "symbolic link" in refused.reason
    assert str(outside) in refused.reason
    # A dangling link pointing outside is refused too (it exists as a link).
    (root / "test" / "dangling").symlink_to(outside / "absent")
    assert (
        _refused(mapper, "root://h//rucio/test/dangling", topic="T").error_class is RejectClass.path_refused
    )
    # Not checked when the site turns the check off.
    trusting = UrlMapper({"T": Prefix("root://h//rucio", str(root))}, resolve_symlinks=False)
    assert trusting.map("root://h//rucio/test/link/passwd", topic="T") == root / "test" / "link" / "passwd"


def test_symlinked_root_itself_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("x")
    link = tmp_path / "mounted"
    link.symlink_to(real)
    mapper = UrlMapper({"T": Prefix("root://h//rucio", str(link))})
    assert mapper.map("root://h//rucio/f", topic="T") == link / "f"


def test_root_for() -> None:
    mapper = UrlMapper(
        rse_prefixes={"A": Prefix("root://a//r", "/data"), "B": Prefix("root://b//r", "/data/b")}
    )
    assert mapper.root_for("/data/b/x") == "/data/b"
    assert mapper.root_for("/data/x") == "/data"
    assert mapper.root_for(Path("/data/b/../x")) == "/data"
    assert mapper.root_for("/elsewhere/x") is None
    assert mapper.root_for("/database/x") is None


def test_fast_and_full_paths_agree() -> None:
    mapper = _mapper()
    plain = "root://xrd2:1095//rucio/test/ab/cd/file.fits"
    assert mapper.map_text(plain, topic="XRD2-test") == "/rucio1/test/ab/cd/file.fits"
    assert (
        mapper.map_text(plain.replace("//rucio", "/rucio"), topic="XRD2-test")
        == "/rucio1/test/ab/cd/file.fits"
    )
    assert mapper.map_text(plain + "/", topic="XRD2-test") == "/rucio1/test/ab/cd/file.fits"
    assert os.path.isabs(mapper.map_text(plain, topic="XRD2-test"))
