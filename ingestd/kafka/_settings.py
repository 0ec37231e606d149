"""Kafka connection settings: one validated model per security protocol.

Every service of the project (daemon, mirror, publisher) connects to Kafka through
:class:`KafkaConnection`; nothing else builds librdkafka parameters. Rubin's
HermesK could not use its SSL/SASL branch; here each protocol has its own model
and the combination is checked when the settings load, so a missing certificate
is reported at start-up with the field to fix, not as a handshake error later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, field_validator, model_validator

__all__ = [
    "KafkaConnection",
    "KafkaSecurity",
    "PlaintextSecurity",
    "SaslSslSecurity",
    "SslSecurity",
]

ClientConfig = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaintextSecurity(_Strict):
    """No encryption, no authentication (what USDF runs today; acceptable on a private network only)."""

    protocol: Literal["PLAINTEXT"] = "PLAINTEXT"

    def client_config(self) -> ClientConfig:
        """Return the librdkafka parameters for this protocol."""
        return {"security.protocol": "PLAINTEXT"}


class SslSecurity(_Strict):
    """TLS, optionally with a client certificate (mutual TLS)."""

    protocol: Literal["SSL"] = "SSL"
    ca_location: FilePath | None = Field(
        None,
        title="CA bundle",
        description="PEM file of the CA(s) that signed the brokers' certificates; system store if unset.",
        examples=["/etc/ingestd/kafka-ca.pem"],
    )
    certificate_location: FilePath | None = Field(
        None,
        title="Client certificate",
        description="PEM client certificate for mutual TLS; needs key_location too.",
    )
    key_location: FilePath | None = Field(None, title="Client private key", description="PEM private key.")
    key_password: SecretStr | None = Field(None, title="Private key password")
    verify_hostname: bool = Field(
        True,
        title="Verify broker hostname",
        description="Check the broker certificate's name against the address dialled.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> SslSecurity:
        if (self.certificate_location is None) != (self.key_location is None):
            raise ValueError(
                "SSL client authentication needs both certificate_location and key_location (or neither)"
            )
        return self

    def client_config(self) -> ClientConfig:
        """Return the librdkafka parameters for this protocol."""
        config: ClientConfig = {
            "security.protocol": "SSL",
            "ssl.endpoint.identification.algorithm": "https" if self.verify_hostname else "none",
        }
        if self.ca_location is not None:
            config["ssl.ca.location"] = str(self.ca_location)
        if self.certificate_location is not None and self.key_location is not None:
            config["ssl.certificate.location"] = str(self.certificate_location)
            config["ssl.key.location"] = str(self.key_location)
        if self.key_password is not None:
            config["ssl.key.password"] = self.key_password.get_secret_value()
        return config


class SaslSslSecurity(_Strict):
    """TLS with SASL/SCRAM username and password (Strimzi's ``scram-sha-512`` listeners)."""

    protocol: Literal["SASL_SSL"] = "SASL_SSL"
    mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    username: str = Field(..., min_length=1, title="SASL username")
    password: SecretStr | None = Field(None, title="SASL password", description="Prefer password_file.")
    password_file: FilePath | None = Field(
        None,
        title="SASL password file",
        description="File whose content (trailing newline stripped) is the password; e.g. a mounted Secret.",
        examples=["/run/secrets/kafka-password"],
    )
    ca_location: FilePath | None = Field(None, title="CA bundle", description="PEM CA file for the brokers.")
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _exactly_one_password(self) -> SaslSslSecurity:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("SASL_SSL needs exactly one of password or password_file")
        return self

    def secret(self) -> str:
        """Return the password, reading the file when one is configured."""
        if self.password_file is not None:
            return Path(self.password_file).read_text().rstrip("\n")
        assert self.password is not None  # enforced by the validator
        return self.password.get_secret_value()

    def client_config(self) -> ClientConfig:
        """Return the librdkafka parameters for this protocol."""
        config: ClientConfig = {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.secret(),
            "ssl.endpoint.identification.algorithm": "https" if self.verify_hostname else "none",
        }
        if self.ca_location is not None:
            config["ssl.ca.location"] = str(self.ca_location)
        return config


KafkaSecurity = Annotated[
    PlaintextSecurity | SslSecurity | SaslSslSecurity,
    Field(discriminator="protocol"),
]


class KafkaConnection(_Strict):
    """Where a Kafka cluster is and how to authenticate to it."""

    bootstrap_servers: list[str] = Field(
        ...,
        min_length=1,
        title="Bootstrap servers",
        description="host:port of one or more brokers; a comma-separated string is accepted.",
        examples=[["kafka-central.example.org:9092"], "127.0.0.1:19092"],
    )
    security: KafkaSecurity = Field(default_factory=PlaintextSecurity, title="Security protocol settings")
    client_id: str = Field("ingestd", title="Client id", description="Shown in broker logs and quotas.")
    librdkafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        title="Extra librdkafka parameters",
        description=(
            "Passed through unchanged, for tuning the project does not model (e.g. socket.keepalive.enable)."
        ),
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        for server in value:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        return value

    def client_config(self) -> ClientConfig:
        """Return the base librdkafka parameters shared by consumers, producers and admin clients."""
        config: ClientConfig = {
            "bootstrap.servers": ",".join(self.bootstrap_servers),
            "client.id": self.client_id,
        }
        config.update(self.security.client_config())
        config.update(self.librdkafka)
        return config
