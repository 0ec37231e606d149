"""OpenSearch settings for the event-document sink (environment prefix ``INGESTD_OPENSEARCH_``).

With no URL configured the sink is disabled (:class:`~monitoring.opensearch.NullSink`):
OpenSearch is an observer, never a requirement for ingest. Every combination is
checked when the settings load, so a password without a user name or a client
certificate without its key is reported at start-up with the field to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AnyHttpUrl, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["OpenSearchSettings"]


class OpenSearchSettings(BaseSettings):
    """Where event documents go and how hard the sink tries (environment prefix ``INGESTD_OPENSEARCH_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_OPENSEARCH_", extra="forbid")

    urls: Annotated[list[AnyHttpUrl], NoDecode] = Field(
        default_factory=list,
        title="OpenSearch URLs",
        description=(
            "One or more node URLs, comma-separated in the environment. Empty disables the sink: "
            "ingest runs the same, without event documents."
        ),
        examples=[["https://opensearch.example.org:9200"], "http://127.0.0.1:9200,http://127.0.0.2:9200"],
    )
    index_prefix: str = Field(
        "ingestd-events",
        title="Index prefix",
        description=(
            "Documents go to daily indices <prefix>-YYYY.MM.DD (by ingest date, UTC); the index template "
            "matches <prefix>-*."
        ),
        examples=["ingestd-events", "ingestd-events-frdf"],
        pattern=r"^[a-z0-9][a-z0-9._\-]{0,199}$",
    )
    buffer_size: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        title="Buffer size (documents)",
        description=(
            "Most documents held in memory while OpenSearch is slow or away; past it the oldest are "
            'dropped and counted in ingestd_opensearch_documents_total{result="dropped"}.'
        ),
        examples=[100_000],
    )
    flush_size: int = Field(
        1000,
        ge=1,
        le=50_000,
        title="Documents per bulk request",
        description="A flush starts as soon as this many documents wait, or after flush_interval_s.",
        examples=[1000],
    )
    flush_interval_s: float = Field(
        2.0,
        gt=0,
        le=300,
        title="Flush interval (seconds)",
        description="Longest time a document waits in the buffer while OpenSearch is healthy.",
        examples=[2.0],
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        title="Request timeout (seconds)",
        description="Timeout of one bulk or template request.",
        examples=[10.0],
    )
    max_retries: int = Field(
        3,
        ge=0,
        le=100,
        title="Retries per document",
        description=(
            "Retries of a document OpenSearch refused with a retriable status (429, 5xx) before it is "
            "counted failed. An unreachable cluster is retried without limit; the buffer bounds memory."
        ),
        examples=[3],
    )
    retry_backoff_s: float = Field(
        0.5,
        gt=0,
        le=60,
        title="First retry delay (seconds)",
        description="Delay before the first retry; doubles each time up to retry_backoff_max_s.",
    )
    retry_backoff_max_s: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Longest retry delay (seconds)",
        description="Cap of the doubling retry delay, also how often an unreachable cluster is probed.",
    )
    manage_template: bool = Field(
        True,
        title="Install the index template",
        description=(
            "Install or update the index template before the first bulk request (idempotent). Turn off "
            "when the sink's user may not manage templates and `ingestd monitoring install` is run instead."
        ),
    )
    number_of_shards: int = Field(
        1, ge=1, le=64, title="Shards per daily index", description="Set by the index template."
    )
    number_of_replicas: int = Field(
        1,
        ge=0,
        le=8,
        title="Replicas per daily index",
        description="Set by the index template; 0 on a single-node cluster keeps it green.",
    )
    username: str | None = Field(
        None,
        min_length=1,
        title="User name",
        description="Basic-auth user; needs a password or password file.",
    )
    password: SecretStr | None = Field(None, title="Password", description="Prefer password_file.")
    password_file: FilePath | None = Field(
        None,
        title="Password file",
        description="File whose content (trailing newline stripped) is the password, e.g. a mounted Secret.",
        examples=["/run/secrets/opensearch-password"],
    )
    ca_file: FilePath | None = Field(
        None,
        title="CA bundle",
        description="PEM file of the CA(s) that signed the nodes' certificates; system store if unset.",
        examples=["/etc/ingestd/opensearch-ca.pem"],
    )
    verify_certs: bool = Field(
        True,
        title="Verify certificates",
        description="Check the nodes' TLS certificates and host names. Turn off only on a test cluster.",
    )
    client_cert_file: FilePath | None = Field(
        None, title="Client certificate", description="PEM client certificate for mutual TLS."
    )
    client_key_file: FilePath | None = Field(
        None, title="Client key", description="PEM private key of client_cert_file."
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OpenSearchSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set INGESTD_OPENSEARCH_PASSWORD or INGESTD_OPENSEARCH_PASSWORD_FILE, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs INGESTD_OPENSEARCH_USERNAME")
        if self.username is not None and self.password is None and self.password_file is None:
            raise ValueError(
                "INGESTD_OPENSEARCH_USERNAME needs INGESTD_OPENSEARCH_PASSWORD_FILE (or _PASSWORD)"
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("mutual TLS needs both client_cert_file and client_key_file (or neither)")
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError("retry_backoff_max_s must be at least retry_backoff_s")
        if self.flush_size > self.buffer_size:
            raise ValueError(f"flush_size ({self.flush_size}) cannot exceed buffer_size ({self.buffer_size})")
        return self

    @property
    def enabled(self) -> bool:
        """Whether any OpenSearch URL is configured."""
        return bool(self.urls)

    def secret(self) -> str | None:
        """Return the basic-auth password, reading the file when one is configured."""
        if self.password_file is not None:
            return Path(self.password_file).read_text().rstrip("\n")
        return self.password.get_secret_value() if self.password is not None else None

    def client_kwargs(self) -> dict[str, Any]:
        """Return the ``opensearchpy.OpenSearch`` arguments for these settings.

        Client-side retries are off: the sink retries itself, so it can keep
        buffering and count what it drops instead of blocking inside a request.
        """
        hosts = [str(url).rstrip("/") for url in self.urls]
        kwargs: dict[str, Any] = {
            "hosts": hosts,
            "timeout": self.request_timeout_s,
            "max_retries": 0,
            "retry_on_timeout": False,
            "verify_certs": self.verify_certs,
            "ssl_show_warn": self.verify_certs,
        }
        if any(host.startswith("https://") for host in hosts):
            kwargs["use_ssl"] = True
        if self.username is not None:
            kwargs["http_auth"] = (self.username, self.secret() or "")
        if self.ca_file is not None:
            kwargs["ca_certs"] = str(self.ca_file)
        if self.client_cert_file is not None and self.client_key_file is not None:
            kwargs["client_cert"] = str(self.client_cert_file)
            kwargs["client_key"] = str(self.client_key_file)
        return kwargs
