"""Prometheus metrics of the HTTP service (prometheus-client, one registry per app)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Metrics:
    """``imgbeddings_requests_total{endpoint,status}``, ``imgbeddings_request_seconds{endpoint}``,
    ``imgbeddings_batch_size``, ``imgbeddings_queue_depth``,
    ``imgbeddings_item_failures_total{reason}``."""

    def __init__(self, depth: Callable[[], float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgbeddings_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "imgbeddings_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.batch_size = Histogram(
            "imgbeddings_batch_size", "Images per ONNX Runtime call", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )  # fmt: skip
        self.queue_depth = Gauge(
            "imgbeddings_queue_depth", "Images in the service (decoding, waiting, inference)",
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth.set_function(depth)
        self.failures = Counter(
            "imgbeddings_item_failures", "Items that failed, by reason", ["reason"], registry=self.registry
        )

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.seconds.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def failed(self, reason: str) -> None:
        self.failures.labels(reason).inc()


def route_of(scope: dict[str, Any]) -> str:
    """The endpoint label of a request: its route's path (bounded label values), or "other"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"
