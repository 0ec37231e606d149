"""Settings of the SQL registry (environment prefix ``INGESTD_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._engine import normalise_url
from .interface import RegistryConfigurationError

__all__ = ["DEFAULT_REGISTRY_URL", "RegistrySettings"]

DEFAULT_REGISTRY_URL: Final = "sqlite:///ingestd-registry.sqlite3"


class RegistrySettings(BaseSettings):
    """Where the registry's database is and how to talk to it.

    The password never sits in logs: give it in ``password_file`` (or in the URL for
    local use); :meth:`display_url` hides it.
    """

    model_config = SettingsConfigDict(env_prefix="INGESTD_REGISTRY_", extra="forbid", frozen=True)

    url: str = Field(
        DEFAULT_REGISTRY_URL,
        min_length=1,
        title="Registry URL",
        description=(
            "SQLAlchemy URL of the registry database: postgresql://user@host:5432/db (psycopg 3) in "
            "production, sqlite:///file for the embedded default."
        ),
        examples=["postgresql://ingestd@db.example.org:5432/registry", DEFAULT_REGISTRY_URL],
    )
    password_file: FilePath | None = Field(
        None,
        title="Database password file",
        description="File whose content (trailing newline stripped) is the database password.",
        examples=["/run/secrets/registry-password"],
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        title="Connect timeout (s)",
        description="How long opening a connection may take before it counts as a transient failure.",
        examples=[10.0],
    )
    record_cache_size: int = Field(
        20_000,
        ge=0,
        title="Dimension record cache",
        description=(
            "Committed dimension records remembered between batches (~480 bytes each: ~10 MB at the "
            "default); bounds the registry's memory whatever its size. A batch needs at most a few "
            "thousand (its exposures, visits, detectors); older ones are forgotten first. 0 disables it."
        ),
        examples=[20_000],
    )

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        value = value.strip()
        try:
            normalise_url(value)
        except RegistryConfigurationError as error:
            raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _password_once(self) -> RegistrySettings:
        if self.password_file is not None and urlsplit(self.url).password:
            raise ValueError("give the database password either in the URL or in password_file, not both")
        return self

    def resolved_url(self) -> str:
        """The URL to connect with, the password from ``password_file`` inserted."""
        if self.password_file is None:
            return self.url
        password = Path(self.password_file).read_text(encoding="utf-8").rstrip("\n")
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        netloc = (
            f"{quote(parts.username or '', safe='')}:{quote(password, safe='')}@{parts.hostname or ''}{port}"
        )
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def display_url(self) -> str:
        """The URL with any password hidden, for logs and messages."""
        return normalise_url(self.url).render_as_string(hide_password=True)
