"""Prometheus metrics of the service, named after Prometheus conventions (base units, ``_total``).

Each app owns its own :class:`CollectorRegistry`, so several apps (tests) never clash.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from service.statistics import InferenceStatistics

NAMESPACE = "resnet_serve"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 10, 16, 20, 32, 40, 64, 80, 128, 256, 512)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
SIZE_BUCKETS = tuple(float(4**i * 1024) for i in range(1, 10))  # 4 KiB .. 256 MiB


class Metrics:
    """Every metric the service exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.statistics = InferenceStatistics()  # the same events, as the v2 statistics extension counts them
        if registry is None:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "End-to-end HTTP request latency.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being served.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_connections_open = Gauge(
            "http_connections_open",
            "Client connections open now.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.http_connections_closed = Counter(
            "http_connections_closed",
            "Client connections the server closed: over the connection limit, or too slow to send a request.",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "grpc_requests",
            "gRPC calls (Open Inference Protocol) by method and status code.",
            ["method", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.grpc_request_duration = Histogram(
            "grpc_request_duration_seconds",
            "End-to-end gRPC call latency.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.grpc_in_flight = Gauge(
            "grpc_requests_in_flight",
            "gRPC calls being served.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.preprocess_duration = Histogram(
            "preprocess_duration_seconds",
            "Decode, resize and crop time per image.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.explain_duration = Histogram(
            "explain_duration_seconds",
            "Class activation maps of one image (explain=true), after its session run.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "queue_duration_seconds",
            "Time an image waited in the batching queue.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds",
            "ONNX Runtime session run time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.batch_size_rows = Histogram(
            "batch_size_rows",
            "Rows (crops) per session run.",
            ["model"],
            buckets=ROW_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.batch_size_requests = Histogram(
            "batch_size_requests",
            "Images (requests) coalesced into one session run.",
            ["model"],
            buckets=REQUEST_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Images waiting for a batch.",
            ["model"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.model_loads = Counter(
            "model_loads",
            "Model versions loaded and warmed up.",
            ["model"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.model_load_failures = Counter(
            "model_load_failures",
            "Model files refused (contract) or failed (runtime).",
            ["model", "reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "model_info",
            "Served model version and the execution provider it runs on (always 1).",
            ["model", "version", "provider"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.predictions = Counter(
            "predictions",
            "Top-1 predictions by model and label.",
            ["model", "label"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.upload_size = Histogram(
            "upload_size_bytes",
            "Size of each uploaded image.",
            ["route"],
            buckets=SIZE_BUCKETS,
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def observer(self, model: str) -> ModelBatchObserver:
        """A :class:`service.batcher.BatchObserver` that records one model's batches."""
        return ModelBatchObserver(self, model)


class ModelBatchObserver:
    """Feeds batch sizes, queue waits, inference time and queue depth of one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._model = model
        self._statistics = metrics.statistics
        self._rows = metrics.batch_size_rows.labels(model)
        self._requests = metrics.batch_size_requests.labels(model)
        self._queue = metrics.queue_duration.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._depth = metrics.queue_depth.labels(model)

    def batch_done(self, rows: int, requests: int, queue_waits: list[float], inference_s: float) -> None:
        self._rows.observe(rows)
        self._requests.observe(requests)
        self._inference.observe(inference_s)
        for wait in queue_waits:
            self._queue.observe(wait)
        self._statistics.batch_done(self._model, requests, queue_waits, inference_s)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)
