"""OpenSearch event documents: settings, the non-blocking sink, the index template.

One document per ingested (or failed) event goes into a daily index
``<prefix>-YYYY.MM.DD``, mapped by an explicit index template, for the campaign
managers' dashboards (Rucio's own events already go to ``rucio-events``).
"""

from ._documents import PreparedDocument, document_id, event_document, index_name, prepare
from ._settings import OpenSearchSettings
from ._sink import EventSink, NullSink, Sink, SinkStats, make_sink
from ._template import (
    TEMPLATE_VERSION,
    TemplateInstall,
    event_mappings,
    index_template,
    install_template,
    make_client,
    template_name,
)

__all__ = [
    "TEMPLATE_VERSION",
    "EventSink",
    "NullSink",
    "OpenSearchSettings",
    "PreparedDocument",
    "Sink",
    "SinkStats",
    "TemplateInstall",
    "document_id",
    "event_document",
    "event_mappings",
    "index_name",
    "index_template",
    "install_template",
    "make_client",
    "make_sink",
    "prepare",
    "template_name",
]
