"""Malformed events by construction: hand-written cases and hypothesis strategies.

Every event here is built so that it *cannot* be registered: a mutation that might
leave a valid event (flipping a digit of ``file-size``, percent-encoding a dot) is
not used. Each carries a unique Kafka key (``bad-<n>``, kept unchanged on the
dead-letter copy) and, where the daemon's answer is certain, the error classes it
must be dead-lettered with; where several are defensible (a registry judgement
versus a planner one), the set lists them, and ``None`` means any class will do
as long as one is given with a reason.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingestd.e2e import GeneratedEvent

KNOWN_RSES = frozenset({"IN2P3_BUTLER_DISK", "IN2P3_RAW_DISK", "RAL_BUTLER_DISK", "LANCS_BUTLER_DISK"})
"""RSEs of the site map: an unknown-RSE case must avoid them (UKDF's would be skipped, not rejected)."""


@dataclass(frozen=True)
class BadEvent:
    """One malformed record for the daemon's topic."""

    key: bytes
    value: bytes
    category: str
    expected: frozenset[str] | None
    """Error classes acceptable on its dead letter; None: any, with a reason."""


def encode(document: Any) -> bytes:
    """Compact JSON, as HermesK writes it."""
    return json.dumps(document, separators=(",", ":")).encode()


def envelope(payload: Any, event_type: Any = "transfer-done") -> dict[str, Any]:
    """A HermesK envelope around ``payload``."""
    return {"event_type": event_type, "payload": payload, "created_at": "2025-06-01 03:12:31.000001"}


def fresh_sidecar(template: dict[str, Any], **changes: Any) -> str:
    """The template's sidecar with a new dataset id and ``changes`` applied."""
    sidecar = json.loads(template["rubin_sidecar"])
    sidecar["id"] = str(uuid.uuid4())
    sidecar.update(changes)
    return json.dumps(sidecar, separators=(",", ":"))


class Corpus:
    """Collects bad events with unique keys."""

    def __init__(self) -> None:
        self.events: list[BadEvent] = []

    def add(self, value: bytes, category: str, expected: Iterable[str] | None) -> None:
        key = f"bad-{len(self.events):05d}".encode()
        self.events.append(
            BadEvent(key, value, category, frozenset(expected) if expected is not None else None)
        )

    def add_payload(self, payload: dict[str, Any], category: str, expected: Iterable[str] | None) -> None:
        self.add(encode(envelope(payload)), category, expected)


def hand_written(corpus: Corpus, good: Sequence[GeneratedEvent], storage_files: dict[str, str]) -> None:
    """The cases the issue names, a few of each, from good events of the run.

    Parameters
    ----------
    corpus
        Receives the events.
    good
        Valid data-product events (their files exist) used as templates.
    storage_files
        ``{"garbage_yaml": dst-url, "garbage_zip": dst-url}`` of files written for the kinds
        that read a file's content.
    """
    template = copy.deepcopy(good[0].payload)
    text = encode(envelope(template))

    # truncated, bad UTF-8, not JSON, not an object
    for cut in (1, 10, len(text) // 3, len(text) // 2, len(text) - 1):
        corpus.add(text[:cut], "truncated", {"invalid_json"})
    corpus.add(b"", "empty", {"invalid_json"})
    corpus.add(b"\xff\xfe\x00garbage", "bad_utf8", {"invalid_utf8"})
    corpus.add(text.replace(b'"scope"', b'"sc\xc3\x28ope"'), "bad_utf8", {"invalid_utf8"})
    corpus.add(text[:40] + b"\xed\xa0\x80" + text[40:], "bad_utf8", {"invalid_utf8"})  # UTF-16 surrogate
    for document in ([1, 2, 3], "transfer-done", 42, None, True):
        corpus.add(encode(document), "not_an_object", {"invalid_envelope"})
    corpus.add(encode({"payload": template}), "no_event_type", {"invalid_envelope"})
    corpus.add(encode({"event_type": "transfer-done"}), "no_payload", {"invalid_envelope", "invalid_payload"})
    corpus.add(
        encode({"event_type": "transfer-done", "payload": "text"}), "payload_not_object", {"invalid_envelope"}
    )
    corpus.add(encode({"event_type": 7, "payload": template}), "event_type_not_text", {"invalid_envelope"})

    # wrong types, missing keys
    for key, value in (
        ("file-size", "lots"),
        ("file-size", -5),
        ("file-size", [1]),
        ("scope", 5),
        ("name", {"a": 1}),
        ("dst-url", ["root://x"]),
        ("dst-rse", None),
        ("checksum-adler", "xyz"),
        ("checksum-md5", "not-a-md5"),
        ("transferred_at", "yesterday"),
        ("transfer-id", ["list"]),
    ):
        payload = copy.deepcopy(template)
        payload[key] = value
        corpus.add_payload(payload, f"wrong_type:{key}", {"invalid_payload"})
    for key in ("scope", "name", "dst-rse", "dst-url"):
        payload = copy.deepcopy(template)
        del payload[key]
        corpus.add_payload(payload, f"missing:{key}", {"invalid_payload"})

    # huge
    for size in (1_100_000, 3_000_000):
        payload = copy.deepcopy(template)
        payload["reason"] = "x" * size
        corpus.add_payload(payload, "huge", {"too_large"})

    # path traversal, unknown RSE, no prefix
    prefix = template["dst-url"].split(template["scope"] + "/", 1)[0]
    for tail in (
        "../../../etc/passwd",
        "dp2_prep/../../../../root/.ssh/id_rsa",
        "../IN2P3_RAW_DISK/raw/x.fits",
    ):
        payload = copy.deepcopy(template)
        payload["dst-url"] = prefix + tail
        corpus.add_payload(payload, "path_traversal", {"path_refused"})
    for rse, url in (
        ("NOWHERE_DISK", "root://nowhere.example.org:1094//rucio/x.fits"),
        ("CERN_PROD", "davs://eosatlas.cern.ch:443/eos/x.fits"),
        ("in2p3_butler_disk", template["dst-url"].replace("ccxrootd", "other")),
    ):
        payload = copy.deepcopy(template)
        payload["dst-rse"] = rse
        payload["dst-url"] = url
        corpus.add_payload(payload, "unknown_rse", {"no_prefix"})
    payload = copy.deepcopy(template)
    payload["dst-url"] = "file:///etc/passwd"
    corpus.add_payload(payload, "wrong_scheme", {"no_prefix", "path_refused"})

    # kinds and sidecars
    for value, expected in (
        (None, {"missing_kind"}),
        ("", {"missing_kind"}),
        ("hologram", {"unknown_kind"}),
        (1, {"unknown_kind"}),
        (["data_product"], {"unknown_kind"}),
    ):
        payload = copy.deepcopy(template)
        payload["rubin_butler"] = value
        corpus.add_payload(payload, "kind", expected)
    for sidecar, expected in (
        ("", {"missing_sidecar"}),
        ("None", {"missing_sidecar"}),
        ("{not json", {"invalid_sidecar"}),
        (json.dumps({"id": "not-a-uuid", "datasetType": {"name": "calexp"}}), {"invalid_sidecar"}),
        (fresh_sidecar(template, run=""), {"invalid_sidecar"}),
        (fresh_sidecar(template, dataId={"dataId": {"instrument": ["LSSTCam"]}}), {"invalid_sidecar"}),
        (json.dumps([1, 2]), {"invalid_sidecar"}),
    ):
        payload = copy.deepcopy(template)
        payload["rubin_sidecar"] = sidecar
        corpus.add_payload(payload, "sidecar", expected)

    # sidecar not matching the payload or the registry
    for event in good[1:6]:
        payload = copy.deepcopy(event.payload)
        payload["rubin_sidecar"] = fresh_sidecar(payload)
        adler = payload["checksum-adler"]
        payload["checksum-adler"] = f"{(int(adler, 16) + 1) & 0xFFFFFFFF:08x}"
        corpus.add_payload(payload, "checksum_not_the_file", {"checksum_mismatch"})
    for event in good[6:10]:
        payload = copy.deepcopy(event.payload)
        payload["rubin_sidecar"] = fresh_sidecar(payload)
        payload["file-size"] = payload["bytes"] = payload["file-size"] + 17
        corpus.add_payload(payload, "size_not_the_file", {"size_mismatch", "file_not_visible"})
    for event in good[10:13]:
        payload = copy.deepcopy(event.payload)
        payload["rubin_sidecar"] = fresh_sidecar(payload)
        payload["dst-url"] = payload["dst-url"].replace(".fits", ".missing.fits")
        payload["name"] = payload["name"].replace(".fits", ".missing.fits")
        corpus.add_payload(payload, "file_missing", {"file_not_visible"})
    for event in good[13:16]:
        payload = copy.deepcopy(event.payload)
        sidecar = json.loads(payload["rubin_sidecar"])
        sidecar["id"] = str(uuid.uuid4())
        sidecar["datasetType"] = {**sidecar["datasetType"], "name": f"hostile_{uuid.uuid4().hex[:6]}"}
        sidecar["dataId"]["dataId"] = {"instrument": sidecar["dataId"]["dataId"]["instrument"]}
        payload["rubin_sidecar"] = json.dumps(sidecar)
        corpus.add_payload(payload, "data_id_lacks_dimensions", {"invalid_dataset", "invalid_sidecar"})
    for event in good[16:19]:
        payload = copy.deepcopy(event.payload)
        sidecar = json.loads(payload["rubin_sidecar"])
        sidecar["id"] = str(uuid.uuid4())
        sidecar["run"] = sidecar["run"] + "/hostile"
        data_id = sidecar["dataId"]["dataId"]
        data_id["physical_filter"] = "no_such_filter"
        sidecar["dataId"]["records"] = {"physical_filter": [{"name": "other_filter", "band": "q"}]}
        payload["rubin_sidecar"] = json.dumps(sidecar)
        corpus.add_payload(payload, "records_disagree", {"sidecar_mismatch", "invalid_sidecar"})

    for event in good[19:22]:  # records nobody will ever send: parked, then dead-lettered when too old
        payload = copy.deepcopy(event.payload)
        sidecar = json.loads(payload["rubin_sidecar"])
        sidecar["id"] = str(uuid.uuid4())
        data_id = sidecar["dataId"]["dataId"]
        for key in ("visit", "exposure"):
            if key in data_id:
                data_id[key] = 1_999_999_999
        payload["rubin_sidecar"] = json.dumps(sidecar)
        corpus.add_payload(payload, "unknown_dimension_records", {"missing_dimensions"})

    # dimension and zip files that are not what they claim
    for kind, url in (
        ("dim_file", storage_files["garbage_yaml"]),
        ("zip_file", storage_files["garbage_zip"]),
    ):
        payload = copy.deepcopy(template)
        payload["rubin_butler"] = kind
        payload["rubin_sidecar"] = ""
        payload["dst-url"] = url
        payload["name"] = url.rsplit("/", 1)[-1]
        payload["file-size"] = payload["bytes"] = None
        payload["checksum-adler"] = payload["checksum-md5"] = None
        corpus.add_payload(payload, f"garbage_{kind}", None)


def conflicts(corpus: Corpus, registered: Sequence[GeneratedEvent]) -> None:
    """Events contradicting datasets already registered (sent once those are in)."""
    for event in registered[:5]:
        payload = copy.deepcopy(event.payload)
        sidecar = json.loads(payload["rubin_sidecar"])
        sidecar["run"] = sidecar["run"] + "/elsewhere"  # same id, other content
        payload["rubin_sidecar"] = json.dumps(sidecar)
        corpus.add_payload(payload, "same_id_other_content", {"conflict"})
    for event in registered[5:10]:
        payload = copy.deepcopy(event.payload)
        payload["rubin_sidecar"] = fresh_sidecar(payload)  # same type, data ID and run, another id
        corpus.add_payload(payload, "same_data_id_other_id", {"conflict"})


def _collect(strategy: st.SearchStrategy[Any], examples: int) -> list[Any]:
    """Draw ``examples`` values of ``strategy`` deterministically (a corpus, not a property test)."""
    drawn: list[Any] = []

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(value: Any) -> None:
        drawn.append(value)

    gather()
    return drawn


def _strategies(template: dict[str, Any]) -> list[tuple[str, st.SearchStrategy[Any], frozenset[str] | None]]:
    text = encode(envelope(template))
    url_prefix = template["dst-url"].split(template["scope"] + "/", 1)[0]
    wrong_values = st.one_of(
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )

    def with_value(key: str) -> Callable[[Any], bytes]:
        def build(value: Any) -> bytes:
            payload = copy.deepcopy(template)
            payload[key] = value
            return encode(envelope(payload))

        return build

    def inserted_byte(args: tuple[int, int]) -> bytes:
        position, byte = args
        return text[:position] + bytes([byte]) + text[position:]

    def traversal(args: tuple[int, str]) -> bytes:
        ups, tail = args
        payload = copy.deepcopy(template)
        payload["dst-url"] = url_prefix + "../" * ups + tail
        return encode(envelope(payload))

    def unknown_rse(args: tuple[str, str]) -> bytes:
        rse, host = args
        payload = copy.deepcopy(template)
        payload["dst-rse"] = rse
        payload["dst-url"] = f"root://{host}.example.org:1094//rucio/{template['scope']}/{template['name']}"
        return encode(envelope(payload))

    def bad_sidecar(value: Any) -> bytes:
        payload = copy.deepcopy(template)
        sidecar = json.loads(template["rubin_sidecar"])
        sidecar["id"] = value
        payload["rubin_sidecar"] = json.dumps(sidecar)
        return encode(envelope(payload))

    def bad_envelope(args: tuple[Any, Any]) -> bytes:
        event_type, payload = args
        return encode({"event_type": event_type, "payload": payload})

    json_scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    )
    required = ("scope", "name", "dst-rse", "dst-url")
    return [
        (
            "h:truncated",
            st.integers(0, len(text) - 1).map(lambda cut: text[:cut]),
            frozenset({"invalid_json"}),
        ),
        (
            "h:bad_utf8",
            st.tuples(
                st.integers(1, len(text) - 2),
                st.sampled_from([0x80, 0x9F, 0xBF, 0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF]),
            ).map(inserted_byte),
            frozenset({"invalid_utf8"}),
        ),
        *[
            (f"h:wrong_type:{key}", wrong_values.map(with_value(key)), frozenset({"invalid_payload"}))
            for key in (*required, "file-size")
        ],
        (
            "h:traversal",
            st.tuples(
                st.integers(1, 8), st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,3}\.fits", fullmatch=True)
            ).map(traversal),
            frozenset({"path_refused"}),
        ),
        (
            "h:unknown_rse",
            st.tuples(
                st.from_regex(r"[A-Z][A-Z0-9_]{2,20}", fullmatch=True).filter(lambda r: r not in KNOWN_RSES),
                st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
            ).map(unknown_rse),
            frozenset({"no_prefix"}),
        ),
        (
            "h:sidecar_id",
            st.one_of(
                st.text(max_size=20), st.integers(), st.lists(st.integers(), max_size=2), st.none()
            ).map(bad_sidecar),
            frozenset({"invalid_sidecar", "missing_sidecar"}),
        ),
        (
            "h:envelope",
            st.one_of(
                st.tuples(
                    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.none()),
                    st.just(template),
                ),
                st.tuples(
                    st.just("transfer-done"), st.one_of(json_scalars, st.lists(json_scalars, max_size=3))
                ),
            ).map(bad_envelope),
            frozenset({"invalid_envelope"}),
        ),
    ]


def generated(corpus: Corpus, template: dict[str, Any], per_strategy: int) -> None:
    """Add ``per_strategy`` hypothesis-drawn events of each malformation."""
    for category, strategy, expected in _strategies(template):
        seen: set[bytes] = set()
        for value in _collect(strategy, per_strategy):
            if value in seen:
                continue
            seen.add(value)
            corpus.add(value, category, expected)
