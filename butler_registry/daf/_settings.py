"""Settings of the real-Butler registry adapter (environment prefix ``INGESTD_DAF_BUTLER_``).

A site that wants ingest to land straight in its existing daf_butler repository
names that repository here; everything else has a default that matches how Rubin's
Data Facilities place files (Rucio writes them where they stay, so ``direct``).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DafButlerSettings", "TransferMode"]


class TransferMode(StrEnum):
    """How ``Butler.ingest`` treats the file it is given (daf_butler's own vocabulary)."""

    direct = "direct"
    """Record the absolute URI and leave the file where Rucio put it (the Data Facility layout)."""
    auto = "auto"
    """Let the datastore choose: ``direct`` for files outside the datastore root, in place otherwise."""
    copy = "copy"
    """Copy into the datastore, leaving the original."""
    move = "move"
    """Move into the datastore."""
    hardlink = "hardlink"
    """Hard-link into the datastore (same file system only)."""
    symlink = "symlink"
    """Absolute symbolic link from the datastore to the file."""
    relsymlink = "relsymlink"
    """Relative symbolic link from the datastore to the file."""
    link = "link"
    """Hard link where possible, symbolic link otherwise."""


class DafButlerSettings(BaseSettings):
    """Where the real Butler repository is and how files are handed to it.

    Environment prefix ``INGESTD_DAF_BUTLER_``; unknown keys are refused so a typo
    is reported at start-up rather than silently ignored.
    """

    model_config = SettingsConfigDict(env_prefix="INGESTD_DAF_BUTLER_", extra="forbid")

    repo: str = Field(
        ...,
        min_length=1,
        title="Butler repository",
        description=(
            "The daf_butler repository to ingest into: a directory holding butler.yaml, the URI of "
            "that file, or a label from the site's DAF_BUTLER_REPOSITORY_INDEX. The repository must "
            "exist already (create it with `butler create`); it is opened writeable."
        ),
        examples=["/sdf/group/rubin/repo/main", "/repo/embargo/butler.yaml", "embargo"],
    )
    transfer: TransferMode = Field(
        TransferMode.direct,
        title="Transfer mode",
        description=(
            "How Butler.ingest treats each file. `direct` records the file where Rucio placed it, "
            "which is what a Data Facility wants; other modes copy or link it into the datastore."
        ),
        examples=["direct"],
    )
    record_validation_info: bool = Field(
        True,
        title="Record size and checksum",
        description=(
            "Let the datastore stat each file and record its size (as `butler ingest` does by default). "
            "Turn off only where the file system is slow and Rucio's checksums are trusted."
        ),
        examples=[True],
    )

    @field_validator("repo")
    @classmethod
    def _strip(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("repo must name a Butler repository (path, URI or index label)")
        return stripped
