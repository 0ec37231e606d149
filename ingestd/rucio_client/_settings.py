"""How ingestd reaches Rucio's REST API for a backfill (environment prefix ``INGESTD_RUCIO_``).

Every connection field is optional: what is left unset is read by rucio-clients
from its own ``rucio.cfg`` (``RUCIO_CONFIG`` or ``/opt/rucio/etc/rucio.cfg``), so a
site that already has a working Rucio client configuration needs nothing here.
Secrets are :class:`~pydantic.SecretStr` or files, never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RucioAuthType", "RucioSettings"]

RucioAuthType = Literal["userpass", "x509", "token"]
"""How ingestd authenticates: user name and password, an X.509 certificate, or a bearer-token file."""


class RucioSettings(BaseSettings):
    """Rucio REST connection and backfill pacing (environment prefix ``INGESTD_RUCIO_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_RUCIO_", extra="forbid", frozen=True)

    host: str | None = Field(
        None,
        title="Rucio server URL",
        description="REST API of the Rucio server; unset: rucio.cfg's [client] rucio_host.",
        examples=["https://rubin-rucio.slac.stanford.edu:8443"],
    )
    auth_host: str | None = Field(
        None,
        title="Rucio authentication server URL",
        description="Unset: the same as host when host is set, else rucio.cfg's [client] auth_host.",
        examples=["https://rubin-rucio.slac.stanford.edu:8443"],
    )
    account: str | None = Field(
        None, title="Rucio account", description="Unset: RUCIO_ACCOUNT or rucio.cfg.", examples=["ingestd"]
    )
    vo: str | None = Field(None, title="Virtual organisation", description="Multi-VO servers only.")
    auth_type: RucioAuthType | None = Field(
        None,
        title="Authentication",
        description=(
            "userpass (username + password), x509 (client_cert + client_key) or token (a bearer-token "
            "file, token_file, sent as issued). Unset: rucio.cfg's [client] auth_type."
        ),
        examples=["userpass", "x509", "token"],
    )
    username: str | None = Field(None, title="User name (userpass)")
    password: SecretStr | None = Field(None, title="Password (userpass)")
    password_file: Path | None = Field(
        None, title="Password file (userpass)", description="A file holding the password (a mounted secret)."
    )
    client_cert: Path | None = Field(None, title="X.509 certificate (x509)")
    client_key: Path | None = Field(None, title="X.509 key (x509)")
    token_file: Path | None = Field(
        None,
        title="Bearer-token file (token)",
        description="A file holding a token the Rucio server accepts; re-read when the client is created.",
    )
    ca_cert: Path | None = Field(
        None,
        title="CA bundle or folder",
        description=(
            "Certificate authorities for an https server; unset: X509_CERT_DIR, rucio.cfg, then certifi."
        ),
    )
    timeout_s: float = Field(
        120.0,
        gt=0,
        le=3_600,
        title="HTTP timeout (seconds)",
        description="Per request (listing streams too).",
    )
    chunk_size: int = Field(
        500,
        ge=1,
        le=5_000,
        title="DIDs per catalogue request",
        description=(
            "Files asked about in one list_replicas and one get_metadata_bulk call. Larger chunks mean "
            "fewer requests; Rucio resolves metadata of each DID of a chunk in one server process."
        ),
    )
    max_requests_per_s: float = Field(
        20.0,
        gt=0,
        le=1_000,
        title="Request rate cap",
        description=(
            "Most REST requests per second this process sends; keeps a backfill polite to a shared server."
        ),
    )
    parallel_requests: int = Field(
        4,
        ge=1,
        le=32,
        title="Chunks asked about at once",
        description=(
            "Chunks of the listing whose replicas and metadata are fetched concurrently, in order, while "
            "the registry writes: Rucio's list_replicas costs the server a few milliseconds per file, so "
            "a backfill is bound by the server's answers unless several are in flight."
        ),
    )
    schemes: list[str] = Field(
        default_factory=list,
        title="PFN schemes",
        description=(
            "Protocols whose PFNs are asked for (root, davs, file, ...). Empty: every scheme the RSE "
            "offers; the PFN matching the RSE's rucio_prefix is used as dst-url."
        ),
        examples=[["root"], ["davs", "root"]],
    )

    @model_validator(mode="after")
    def _credentials_match(self) -> RucioSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.auth_type == "token" and self.token_file is None:
            raise ValueError("auth_type token needs token_file (a file holding the bearer token)")
        if self.auth_type == "x509" and (self.client_cert is None) != (self.client_key is None):
            raise ValueError(
                "auth_type x509 needs both client_cert and client_key (or neither, from rucio.cfg)"
            )
        for name in ("password_file", "client_cert", "client_key", "token_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        return self

    def client_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``rucio.client.Client`` (unset values left to rucio.cfg).

        Reads the password file: call it where the client is built, not at import.
        """
        arguments: dict[str, Any] = {"timeout": self.timeout_s, "user_agent": "ingestd-backfill"}
        if self.host:
            arguments["rucio_host"] = self.host
            arguments["auth_host"] = self.auth_host or self.host
        elif self.auth_host:
            arguments["auth_host"] = self.auth_host
        if self.account:
            arguments["account"] = self.account
        if self.vo:
            arguments["vo"] = self.vo
        if self.ca_cert is not None:
            arguments["ca_cert"] = str(self.ca_cert)
        creds: dict[str, Any] = {}
        if self.auth_type == "token":
            arguments["auth_type"] = "oidc"  # rucio-clients sends a discovered bearer token as is
        elif self.auth_type is not None:
            arguments["auth_type"] = self.auth_type
        if self.username:
            creds["username"] = self.username
        if self.password is not None:
            creds["password"] = self.password.get_secret_value()
        elif self.password_file is not None:
            creds["password"] = self.password_file.read_text().strip()
        if self.client_cert is not None and self.client_key is not None:
            creds["client_cert"] = str(self.client_cert)
            creds["client_key"] = str(self.client_key)
        if creds:
            arguments["creds"] = creds
        return arguments
