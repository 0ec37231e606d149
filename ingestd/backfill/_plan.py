"""What a backfill lists, where it keeps its state, and which PFNs map to local files at the RSE."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ingestd.config import IngestdSettings
from ingestd.mapping import UrlMapper
from ingestd.rucio_client import RucioCatalogue
from ingestd.sources import ListingUnit

__all__ = ["BackfillRequest", "default_state_dir", "listing_units", "local_roots", "preferred_prefixes"]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/ingestd/backfill`` (``~/.local/state/ingestd/backfill``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ingestd" / "backfill"


@dataclass(frozen=True)
class BackfillRequest:
    """One backfill: an RSE, optionally narrowed to scopes, a dataset, and replicas updated since a time."""

    rse: str
    scopes: tuple[str, ...] = ()
    """Scopes to list (empty: every scope of the server)."""
    dataset: str | None = None
    """``scope:name`` of a dataset (or container) whose files alone are listed."""
    since: datetime | None = None

    def __post_init__(self) -> None:
        if not self.rse:
            raise ValueError("--rse is required")
        if self.dataset is not None:
            _, _, name = self.dataset.partition(":")
            if not name and len(self.scopes) != 1:
                raise ValueError(
                    f"--dataset {self.dataset!r}: give it as SCOPE:NAME, or give exactly one --scope"
                )

    @property
    def dataset_did(self) -> tuple[str, str] | None:
        """The dataset as ``(scope, name)``."""
        if self.dataset is None:
            return None
        scope, _, name = self.dataset.partition(":")
        return (scope, name) if name else (self.scopes[0], scope)

    def parameters(self) -> dict[str, Any]:
        """What identifies this backfill's state file."""
        return {
            "rse": self.rse,
            "scopes": sorted(self.scopes),
            "dataset": None if self.dataset_did is None else ":".join(self.dataset_did),
            "since": None if self.since is None else self.since.isoformat(),
        }

    def state_file(self, state_dir: Path) -> Path:
        """``<state_dir>/<RSE>-<digest of the parameters>.sqlite3``."""
        digest = hashlib.sha256(json.dumps(self.parameters(), sort_keys=True).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.rse)
        return state_dir / f"{safe}-{digest}.sqlite3"


def listing_units(request: BackfillRequest, catalogue: RucioCatalogue) -> list[ListingUnit]:
    """The listing units of ``request``: the dataset's files, or each scope's files in scope order."""
    did = request.dataset_did
    if did is not None:
        scope, name = did
        return [ListingUnit(f"dataset:{scope}:{name}", lambda: catalogue.dataset_files(scope, name))]
    scopes = sorted(request.scopes) if request.scopes else catalogue.scopes()
    return [_scope_unit(catalogue, scope) for scope in scopes]


def _scope_unit(catalogue: RucioCatalogue, scope: str) -> ListingUnit:
    def names() -> Iterator[tuple[str, str]]:
        for name in catalogue.file_names(scope):
            yield scope, name

    return ListingUnit(f"scope:{scope}", names)


def preferred_prefixes(settings: IngestdSettings, rse: str) -> tuple[str, ...]:
    """The ``rucio_prefix`` values that map this RSE's PFNs: its site-map entry and its topics'."""
    found: list[str] = []
    entry = settings.site.prefix_for(rse)
    if entry is not None:
        found.append(entry.rucio_prefix)
    mapper = _mapper(settings)
    for topic, prefix in settings.topic_prefixes.items():
        if mapper.canonical_topic(topic).startswith(f"{rse}-"):
            found.append(prefix.rucio_prefix)
    return tuple(dict.fromkeys(found))


def local_roots(settings: IngestdSettings, rse: str, scopes: Sequence[str] = ()) -> tuple[str, ...]:
    """Local folders where this RSE's files land (its prefix rules' roots)."""
    mapper = _mapper(settings)
    roots: list[str] = []
    for rule in mapper.rules:
        origin_rse = rule.origin == f"RSE {rse}"
        topic = rule.origin.removeprefix("topic ") if rule.origin.startswith("topic ") else None
        topic_of_rse = topic is not None and mapper.canonical_topic(topic).startswith(f"{rse}-")
        if topic_of_rse and scopes:
            topic_of_rse = any(mapper.canonical_topic(topic or "") == f"{rse}-{scope}" for scope in scopes)
        if origin_rse or topic_of_rse:
            roots.append(rule.root)
    return tuple(dict.fromkeys(roots))


def _mapper(settings: IngestdSettings) -> UrlMapper:
    return UrlMapper.from_site(
        settings.topic_prefixes,
        settings.site,
        source_aliases=settings.consumer.source_aliases,
        resolve_symlinks=False,
    )
