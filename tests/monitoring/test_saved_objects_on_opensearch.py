"""Every visualization's aggregations run on the real OpenSearch over real event documents.

No OpenSearch Dashboards server can run here, so this is the next best proof that
the saved objects import and render: each visState is translated into the search
Dashboards would send (same fields, same aggregation types, same query) and run
against indices made by our template; an unmapped or non-aggregatable field
fails the search or returns no buckets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opensearchpy import OpenSearch
from prometheus_client import CollectorRegistry

from ingestd.work import Outcome
from monitoring.dashboards import render_saved_objects
from monitoring.metrics import IngestMetrics
from monitoring.opensearch import EventSink, OpenSearchSettings

from .conftest import make_report


def _lucene(kuery: str) -> str:
    """The simple kuery expressions the saved objects use, in query_string syntax."""
    return kuery.replace(" or ", " OR ").replace(" and ", " AND ")


def _bucket_agg(agg: dict[str, Any]) -> dict[str, Any]:
    params = agg["params"]
    if agg["type"] == "date_histogram":
        interval = {"calendar_interval": "1d"} if params["interval"] == "d" else {"fixed_interval": "1h"}
        return {
            "date_histogram": {"field": params["field"], **interval, "min_doc_count": params["min_doc_count"]}
        }
    if agg["type"] == "terms":
        terms: dict[str, Any] = {"field": params["field"], "size": params["size"]}
        if params.get("missingBucket"):
            terms["missing"] = "__missing__"
        return {"terms": terms}
    raise AssertionError(f"bucket aggregation {agg['type']} not translated")


def _metric_agg(agg: dict[str, Any]) -> dict[str, Any] | None:
    if agg["type"] == "count":
        return None
    if agg["type"] == "sum":
        return {"sum": {"field": agg["params"]["field"]}}
    if agg["type"] == "percentiles":
        return {"percentiles": {"field": agg["params"]["field"], "percents": agg["params"]["percents"]}}
    raise AssertionError(f"metric aggregation {agg['type']} not translated")


def _search_body(vis: dict[str, Any], query: str) -> dict[str, Any]:
    metrics = {f"m{a['id']}": _metric_agg(a) for a in vis["aggs"] if a["schema"] == "metric"}
    inner: dict[str, Any] = {name: body for name, body in metrics.items() if body is not None}
    for agg in reversed([a for a in vis["aggs"] if a["schema"] != "metric"]):
        node = _bucket_agg(agg)
        if inner:
            node["aggs"] = inner
        inner = {f"b{agg['id']}": node}
    body: dict[str, Any] = {"size": 0, "aggs": inner}
    if query:
        body["query"] = {"query_string": {"query": _lucene(query)}}
    return body


@pytest.mark.opensearch
def test_visualizations_aggregate_on_real_documents(opensearch_url: str, index_prefix: str) -> None:
    """Each visualization and the saved search run without error and find the documents they chart."""
    settings = OpenSearchSettings(
        urls=opensearch_url, index_prefix=index_prefix, number_of_replicas=0, flush_interval_s=0.2
    )
    sink = EventSink(settings, IngestMetrics(CollectorRegistry()))
    sink.start()
    sink.submit(
        [make_report(i, facility="FrDF" if i % 2 else "UKDF", size=10 * i) for i in range(30)]
        + [make_report(100 + i, outcome=Outcome.rejected, error_class="invalid_json", reason="bad JSON")
           for i in range(4)]
    )  # fmt: skip
    assert sink.flush(60)
    sink.close(timeout_s=5)

    client = OpenSearch(hosts=[opensearch_url])
    client.indices.refresh(index=f"{index_prefix}-*")
    objects = [json.loads(line) for line in render_saved_objects(index_prefix).splitlines()]
    pattern = objects[0]["attributes"]["title"]
    assert pattern == f"{index_prefix}-*"
    checked = 0
    for item in objects:
        attributes = item["attributes"]
        source = json.loads(attributes.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
        query = source.get("query", {}).get("query", "")
        if item["type"] == "visualization":
            vis = json.loads(attributes["visState"])
            if vis["type"] == "markdown":
                continue
            response = client.search(index=pattern, body=_search_body(vis, query))
            assert response["hits"]["total"]["value"] > 0, attributes["title"]
            outer = next(iter(response["aggregations"].values()))
            assert outer["buckets"], attributes["title"]
            checked += 1
        elif item["type"] == "search":
            body = {
                "query": {"query_string": {"query": _lucene(query)}},
                "sort": [{field: order} for field, order in attributes["sort"]],
                "_source": attributes["columns"],
            }
            hits = client.search(index=pattern, body=body)["hits"]["hits"]
            assert len(hits) == 4
            assert hits[0]["_source"]["error_class"] == "invalid_json"
            checked += 1
    assert checked == 7
    failures = next(o for o in objects if o["id"] == "ingestd-failures-by-reason")
    response = client.search(
        index=pattern,
        body=_search_body(
            json.loads(failures["attributes"]["visState"]),
            json.loads(failures["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"],
        ),
    )
    (bucket,) = response["aggregations"]["b2"]["buckets"]
    assert bucket["key"] == "invalid_json"
    assert bucket["doc_count"] == 4
    assert bucket["b3"]["buckets"][0]["key"] == "bad JSON"
    client.close()
