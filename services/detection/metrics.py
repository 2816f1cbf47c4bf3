"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("detection_requests", "Detect requests by HTTP status", ["status"],
                                registry=self.registry)
        self.images = Counter("detection_images", "Images detected", registry=self.registry)
        self.latency = Histogram("detection_request_seconds", "Detect request latency", buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("detection_batch_size", "Images per engine call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.engine_seconds = Histogram("detection_engine_seconds", "Engine time per batch",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("detection_queue_depth", "Images waiting for the engine", registry=self.registry)

    def observe_batch(self, size: int, engine_s: float) -> None:
        self.batch_size.observe(size)
        self.engine_seconds.observe(engine_s)
