"""Prometheus metrics through Ray's metrics API (`ray.util.metrics`).

Ray exports them on each node's metrics port (`ray start --metrics-export-port`), prefixed
`ray_chorus_`. Metric objects are created lazily in the process that records them, since they
need a connected Ray worker.
"""

from __future__ import annotations

from functools import cached_property

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16]
TOKENS_PER_S_BOUNDARIES = [1, 5, 10, 20, 50, 100, 200, 500]


class _Lazy:
    """Creates the Ray metric on first use; does nothing outside a Ray worker (plain unit tests)."""

    def __init__(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kwargs) -> None:
        self.kind, self.name, self.description, self.tag_keys, self.kwargs = kind, name, description, tag_keys, kwargs

    @cached_property
    def _metric(self):
        import ray
        from ray.util import metrics

        if not ray.is_initialized():
            return None
        cls = {"counter": metrics.Counter, "histogram": metrics.Histogram, "gauge": metrics.Gauge}[self.kind]
        return cls(f"chorus_{self.name}", description=self.description, tag_keys=self.tag_keys, **self.kwargs)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if self._metric is not None:
            self._metric.inc(value, tags=tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        if self._metric is not None:
            self._metric.observe(value, tags=tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        if self._metric is not None:
            self._metric.set(value, tags=tags)


REQUESTS = _Lazy("counter", "requests_total", "HTTP requests by route and status", ("route", "status"))
ERRORS = _Lazy("counter", "errors_total", "HTTP error responses by route and status", ("route", "status"))
TTFT = _Lazy("histogram", "time_to_first_token_s", "Time to first token", ("route",), boundaries=LATENCY_BOUNDARIES_S)
INTER_TOKEN = _Lazy(
    "histogram", "inter_token_latency_s", "Time between streamed tokens", ("route",), boundaries=LATENCY_BOUNDARIES_S
)
TOKENS_PER_S = _Lazy(
    "histogram", "decode_tokens_per_s", "Decode speed per request", ("route",), boundaries=TOKENS_PER_S_BOUNDARIES
)
ENCODER_LATENCY = _Lazy(
    "histogram", "encoder_batch_latency_s", "Encoder time per batch", ("encoder",), boundaries=LATENCY_BOUNDARIES_S
)
ENCODER_BATCH_SIZE = _Lazy(
    "histogram", "encoder_batch_size", "Items per encoder batch", ("encoder",), boundaries=BATCH_BOUNDARIES
)
SPEECH_LATENCY = _Lazy(
    "histogram", "speech_sentence_latency_s", "Speech synthesis time per sentence", ("voice",), boundaries=LATENCY_BOUNDARIES_S
)
QUEUE_DEPTH = _Lazy("gauge", "ingress_in_flight_requests", "Requests in flight at the ingress", ("route",))


METRICS_FETCH_TIMEOUT_S = 5.0


def _node_metrics_url() -> str | None:
    """This node's Ray metrics agent (Prometheus text), where Ray runs one."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


async def node_metrics_text() -> str | None:
    """The Prometheus text of this node's metrics (Chorus's `ray_chorus_*` and Ray's own), fetched
    from the node's metrics agent; None where there is none to ask. The service serves it at
    `/metrics`, behind the API's own keys, so scraping needs no port of Ray's opened to anyone."""
    import asyncio

    import httpx

    url = await asyncio.to_thread(_node_metrics_url)
    if url is None:
        return None
    async with httpx.AsyncClient(timeout=METRICS_FETCH_TIMEOUT_S, trust_env=False) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.text
