"""The index template of the event documents, and its idempotent installation.

Explicit mappings, because dynamic mapping guesses wrong in ways that cannot be
undone for the life of an index: ids become analysed text, sizes become floats
or longs depending on the first value seen, a timestamp string may stay a
string. ``dynamic: false`` keeps a field a newer daemon adds in ``_source``
without failing the document in an index made by an older template.

The template carries a hash of its own body in ``_meta``; installing compares
that hash, so ``ingestd monitoring install`` run twice changes nothing, and run
after an upgrade replaces the template (new daily indices take the new mappings).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Final

import orjson

from ._settings import OpenSearchSettings

__all__ = [
    "TEMPLATE_VERSION",
    "TemplateInstall",
    "event_mappings",
    "index_template",
    "install_template",
    "make_client",
    "template_name",
]

TEMPLATE_VERSION: Final = 2
"""Bump when the mappings change in a way operators should notice (2: identifiers lost doc values)."""

_KEYWORD: Final = {"type": "keyword", "ignore_above": 1024}
_IDENTIFIER: Final = {"type": "keyword", "ignore_above": 1024, "doc_values": False}
"""A field searched for one value but never aggregated or sorted on: indexed, without doc values.

Doc values (the column store behind aggregations and sorting) of fields that are
different in every document were 17 % of OpenSearch's CPU per document (300,000
documents, 0.0464 against 0.0387 ms), paid again at every merge. A term, prefix or
wildcard query on them still works; a terms aggregation or sort on them does not.
``name``, ``source.offset``, ``source.line`` and ``ingested_at`` (a copy of
``@timestamp``, which keeps its doc values) are mapped the same way below.
"""
_DATE: Final = {"type": "date", "format": "strict_date_optional_time||epoch_millis"}


def event_mappings() -> dict[str, Any]:
    """Return the explicit mappings of an event document (see :func:`~._documents.event_document`)."""
    keyword_fields = (
        "outcome", "event_type", "kind", "facility", "rse", "scope", "dataset_type", "run", "error_class",
        "host", "ingestd_version",
    )  # fmt: skip
    properties: dict[str, Any] = {name: dict(_KEYWORD) for name in keyword_fields}
    identifiers = ("position", "did", "adler32", "md5", "transfer_id", "dataset_id")
    properties.update({name: dict(_IDENTIFIER) for name in identifiers})
    properties.update(
        {
            "@timestamp": dict(_DATE),
            "ingested_at": {**_DATE, "doc_values": False},
            "transferred_at": dict(_DATE),
            "latency_seconds": {"type": "float"},
            "size_bytes": {"type": "long"},
            "name": {"type": "keyword", "ignore_above": 4096, "doc_values": False},
            "reason": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
            "source": {
                "properties": {
                    "type": dict(_KEYWORD),
                    "topic": dict(_KEYWORD),
                    "partition": {"type": "integer"},
                    "offset": {"type": "long", "doc_values": False},
                    "line": {"type": "long", "doc_values": False},
                }
            },
        }
    )
    return {"dynamic": False, "date_detection": False, "properties": dict(sorted(properties.items()))}


def template_name(prefix: str) -> str:
    """Return the template's name for an index prefix (one template per prefix)."""
    return prefix


def index_template(settings: OpenSearchSettings) -> dict[str, Any]:
    """Return the composable index template body for ``settings.index_prefix``."""
    body: dict[str, Any] = {
        "index_patterns": [f"{settings.index_prefix}-*"],
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "template": {
            "settings": {
                "index": {
                    "number_of_shards": settings.number_of_shards,
                    "number_of_replicas": settings.number_of_replicas,
                    "refresh_interval": "5s",
                }
            },
            "mappings": event_mappings(),
        },
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["_meta"] = {
        "managed_by": "ingestd",
        "description": "ingestd event documents: one per ingested or failed Rucio transfer event",
        "body_hash": digest,
    }
    return body


class TemplateInstall(StrEnum):
    """What :func:`install_template` did."""

    created = "created"
    updated = "updated"
    unchanged = "unchanged"


def make_client(settings: OpenSearchSettings) -> Any:
    """Build an ``opensearchpy.OpenSearch`` client for ``settings`` (no request is made).

    Responses are parsed with orjson: the client's own parser (the standard
    library's) spent more of the daemon's time reading bulk responses than
    building the documents did.
    """
    from opensearchpy import OpenSearch
    from opensearchpy.exceptions import SerializationError
    from opensearchpy.serializer import JSONSerializer

    class OrjsonResponses(JSONSerializer):
        """The client's JSON serializer, with orjson reading the responses."""

        def loads(self, s: str | bytes) -> Any:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError as error:
                raise SerializationError(s, error) from error

    if not settings.enabled:
        raise ValueError("no OpenSearch URL configured (INGESTD_OPENSEARCH_URLS)")
    return OpenSearch(**settings.client_kwargs(), serializer=OrjsonResponses())


def install_template(client: Any, settings: OpenSearchSettings) -> TemplateInstall:
    """Create or update the index template; does nothing when the installed one is identical.

    Raises
    ------
    opensearchpy.exceptions.TransportError
        OpenSearch refused the request (e.g. 403: the user may not manage templates).
    opensearchpy.exceptions.ConnectionError
        OpenSearch could not be reached.
    """
    from opensearchpy.exceptions import NotFoundError

    name = template_name(settings.index_prefix)
    body = index_template(settings)
    try:
        current = client.indices.get_index_template(name=name)
    except NotFoundError:
        current = None
    if current is not None:
        installed = current.get("index_templates", [])
        meta = installed[0].get("index_template", {}).get("_meta", {}) if installed else {}
        if meta.get("body_hash") == body["_meta"]["body_hash"]:
            return TemplateInstall.unchanged
    client.indices.put_index_template(name=name, body=body)
    return TemplateInstall.created if current is None else TemplateInstall.updated
