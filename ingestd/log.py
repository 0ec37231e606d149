"""Logging set-up shared by every ingestd service.

structlog is configured once, from settings, by the CLI entry point: JSON lines in
production (one object per event, ready for a log shipper) and a readable,
coloured console on a terminal. Standard-library loggers (confluent-kafka,
SQLAlchemy, alembic) are routed through the same processors so nothing prints in
a second format. Event names are constants; data goes into keys.
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from typing import Any

import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["LogFormat", "LoggingSettings", "configure_logging", "get_logger"]


class LogFormat(StrEnum):
    """How log records are rendered."""

    json = "json"
    """One JSON object per line; for services and log shippers."""
    console = "console"
    """Human-readable key=value lines; for terminals."""
    auto = "auto"
    """Console when standard error is a terminal, JSON otherwise."""


class LoggingSettings(BaseSettings):
    """Logging settings (environment prefix ``INGESTD_LOG_``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTD_LOG_", extra="forbid")

    level: str = Field(
        "INFO",
        title="Log level",
        description="Minimum level of records emitted: DEBUG, INFO, WARNING, ERROR.",
        examples=["INFO", "DEBUG"],
        pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
    )
    format: LogFormat = Field(
        LogFormat.auto,
        title="Log format",
        description="json for services, console for terminals, auto to pick by whether stderr is a TTY.",
    )


def configure_logging(settings: LoggingSettings | None = None, *, service: str = "ingestd") -> None:
    """Configure structlog and the standard library logging once for the process.

    Parameters
    ----------
    settings
        Level and format; defaults are read from the environment.
    service
        Bound to every record as ``service`` so mixed logs can be told apart.
    """
    settings = settings or LoggingSettings()
    level = logging.getLevelName(settings.level.upper())
    fmt = settings.format
    if fmt is LogFormat.auto:
        fmt = LogFormat.console if sys.stderr.isatty() else LogFormat.json

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt is LogFormat.json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that are chatty at INFO stay at WARNING unless DEBUG was asked for.
    for noisy in ("sqlalchemy.engine", "alembic", "opensearch", "urllib3", "kafka"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger named after its module."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
