"""Prometheus metrics: request counts, latency per endpoint, per search stage and mode, errors.

Each app gets its own registry (tests create many apps in one process). With ``--workers N`` each
worker process exports its own numbers; scrape them through one port per worker or aggregate them
upstream.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trident_search.core.schemas import SearchResponse

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Milliseconds matter here: most searches finish in 2-50 ms.
_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's collectors, bound to one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trident_http_requests_total",
            "HTTP requests by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trident_http_request_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "trident_errors_total",
            "Error responses by route and error code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "trident_search_stage_seconds",
            "Time per search stage (encode_*, bm25, sparse, dense, fusion, fetch, total) by mode.",
            ["mode", "stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.searches = Counter(
            "trident_searches_total", "Searches answered, by mode.", ["mode"], registry=self.registry
        )

    def observe_search(self, response: SearchResponse) -> None:
        self.searches.labels(response.mode).inc()
        for stage, ms in response.timings_ms.items():
            self.stage.labels(response.mode, stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
