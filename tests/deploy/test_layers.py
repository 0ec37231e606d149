"""The layering rules of site files: inheritance, strict overlays, list merging, provenance in errors."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from ingestd.site import SiteFileError, SiteValidationError, load_layers, load_site
from ingestd.site._model import OPEN_MAPPINGS

SITES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sites"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "base.yaml",
        """
        top: {a: 1, nested: {b: 2}, nothing: null}
        scalars: [x, y]
        facilities:
          - {name: A, rses: ["A_.*"], prefixes: {A1: {p: 1}}}
          - {name: B, rses: ["B_.*"]}
        service: {config: {}}
        """,
    )
    return write(tmp_path, "child.yaml", "extends: base.yaml\ntop: {a: 10, added: true}\nown: here\n")


def test_child_inherits_and_may_add_keys(base: Path) -> None:
    layers = load_layers(base)
    assert layers.data["top"] == {"a": 10, "nested": {"b": 2}, "nothing": None, "added": True}
    assert layers.data["own"] == "here"
    assert [p.name for p in layers.files] == ["base.yaml", "child.yaml"]
    assert layers.origin_of(("top", "a")).name == "child.yaml"
    assert layers.origin_of(("top", "nested", "b")).name == "base.yaml"


def test_overlay_changes_existing_keys_only(base: Path, tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "top: {nested: {b: 3}, nothing: {now: set}}\n")
    layers = load_layers(base, [good])
    assert layers.data["top"]["nested"] == {"b": 3}
    assert layers.data["top"]["nothing"] == {"now": "set"}, "a null may be given any value"
    assert layers.origin_of(("top", "nested", "b")).name == "good.yaml"
    typo = write(tmp_path, "typo.yaml", "top: {nestd: {b: 3}}\n")
    with pytest.raises(SiteFileError, match=r"typo\.yaml: top\.nestd: not in the site it overlays"):
        load_layers(base, [typo])


def test_overlay_cannot_extend(base: Path, tmp_path: Path) -> None:
    overlay = write(tmp_path, "o.yaml", "extends: base.yaml\n")
    with pytest.raises(SiteFileError, match="an overlay cannot extend"):
        load_layers(base, [overlay])


def test_lists_are_replaced_or_appended_explicitly(base: Path, tmp_path: Path) -> None:
    replace = write(tmp_path, "r.yaml", "scalars: [z]\n")
    assert load_layers(base, [replace]).data["scalars"] == ["z"]
    append = write(tmp_path, "a.yaml", "scalars+: [z]\n")
    layers = load_layers(base, [append])
    assert layers.data["scalars"] == ["x", "y", "z"]
    assert layers.origin_of(("scalars", 2)).name == "a.yaml"
    assert layers.origin_of(("scalars", 0)).name == "base.yaml"


def test_named_items_merge_by_name(base: Path, tmp_path: Path) -> None:
    change = write(tmp_path, "c.yaml", "facilities: [{name: B, rses: ['B_X']}]\n")
    facilities = load_layers(base, [change]).data["facilities"]
    assert [f["name"] for f in facilities] == ["A", "B"]
    assert facilities[1]["rses"] == ["B_X"]
    unknown = write(tmp_path, "u.yaml", "facilities: [{name: C, rses: ['C_.*']}]\n")
    with pytest.raises(SiteFileError, match=r"no item named 'C'.*facilities\+"):
        load_layers(base, [unknown])
    added = write(tmp_path, "add.yaml", "facilities+: [{name: C, rses: ['C_.*']}]\n")
    assert [f["name"] for f in load_layers(base, [added]).data["facilities"]] == ["A", "B", "C"]
    again = write(tmp_path, "again.yaml", "facilities+: [{name: A, rses: []}]\n")
    with pytest.raises(SiteFileError, match="'A' is already in the list"):
        load_layers(base, [again])


def test_open_mappings_accept_new_keys(base: Path, tmp_path: Path) -> None:
    overlay = write(tmp_path, "o.yaml", "service: {config: {batching: {max_events: 5}}}\n")
    open_paths = frozenset({("service", "config"), ("facilities", "*", "prefixes")})
    assert load_layers(base, [overlay], open_paths=open_paths).data["service"]["config"] == {
        "batching": {"max_events": 5}
    }
    prefixes = write(tmp_path, "p.yaml", "facilities: [{name: A, prefixes: {A2: {p: 2}}}]\n")
    assert set(load_layers(base, [prefixes], open_paths=open_paths).data["facilities"][0]["prefixes"]) == {
        "A1",
        "A2",
    }
    with pytest.raises(SiteFileError):
        load_layers(base, [overlay])
    assert ("daemon", "config") in OPEN_MAPPINGS


def test_shape_changes_are_refused(base: Path, tmp_path: Path) -> None:
    overlay = write(tmp_path, "o.yaml", "top: {nested: 5}\n")
    with pytest.raises(SiteFileError, match="replaces a mapping by a value"):
        load_layers(base, [overlay])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("- 1\n", "top level must be a mapping"),
        ("a: [\n", "not valid YAML"),
        ("1: x\n", "keys must be strings"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SiteFileError, match=message) as caught:
        load_layers(path)
    assert "bad.yaml" in str(caught.value)


def test_extends_cycles_and_missing_parents(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SiteFileError, match="extends itself"):
        load_layers(b)
    orphan = write(tmp_path, "orphan.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(SiteFileError, match=r"nowhere\.yaml does not exist"):
        load_layers(orphan)


def test_validation_errors_name_the_file_that_set_the_value(tmp_path: Path) -> None:
    overlay = write(tmp_path, "bad-port.yaml", "daemon: {port: 99999}\nregistry: {url: 'mysql://x/y'}\n")
    with pytest.raises(SiteValidationError) as caught:
        load_site(SITES_DIR / "frdf.yaml", environment="dev", overlays=[overlay])
    problems = caught.value.problems
    assert any("bad-port.yaml: daemon.port:" in p and "99999" in p for p in problems), problems
    assert any("bad-port.yaml: registry.url:" in p and "postgresql://" in p for p in problems), problems


def test_unknown_key_in_a_facility_file_is_refused(tmp_path: Path) -> None:
    site = write(tmp_path, "site.yaml", f"extends: {SITES_DIR / 'frdf.yaml'}\ndaemon: {{replicaz: 3}}\n")
    with pytest.raises(SiteValidationError, match=r"site\.yaml: daemon\.replicaz: unknown key"):
        load_site(site)


def test_environment_overlay_must_exist() -> None:
    with pytest.raises(SiteFileError, match="available: dev, prod, test"):
        load_site(SITES_DIR / "frdf.yaml", environment="staging")
