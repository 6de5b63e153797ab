"""Prometheus metrics of the API process, served on its own /metrics route."""

from __future__ import annotations

import hashlib

from prometheus_client import Counter, Gauge, Histogram

# latency buckets from a millisecond to minutes: TTFT and end-to-end share them
_LATENCY = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
_ITL = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

# Every HTTP answer, counted by one middleware (berth/api/middleware.py; RefuseOverRate counts
# the answers it gives before that one sees the request). Replaces
# berth_api_requests_total{route,status}, which counted chat answers and BerthErrors only
# (migration in docs/operations.md).
HTTP_REQUESTS = Counter(
    "berth_api_http_requests_total",
    "HTTP requests answered, by method, route template (`unmatched` when no route matched, "
    "`refused_early` for a tenant's 429 answered before routing) and status class (2xx, "
    "4xx, 5xx; an unhandled exception counts as 5xx). Counted when the response ends, so a "
    "stream counts when it closes.",
    ["method", "route", "status"],
)
HTTP_RESPONSE_START = Histogram(
    "berth_api_http_response_start_seconds",
    "From the request's arrival to its status line and headers, by method and route.",
    ["method", "route"],
    buckets=_LATENCY,
)
HTTP_RESPONSE_END = Histogram(
    "berth_api_http_response_end_seconds",
    "From the request's arrival to its response's last byte (a stream's end), by method and route.",
    ["method", "route"],
    buckets=_LATENCY,
)
# by model (the served base model a request resolved to, so label values are bounded by
# what workers serve), as vLLM's own vllm:* latency series are by model_name
TTFT = Histogram(
    "berth_api_time_to_first_token_seconds",
    "From the request's arrival to its first generated token, by model.",
    ["model"],
    buckets=_LATENCY,
)
ITL = Histogram(
    "berth_api_inter_token_latency_seconds",
    "Between successive token events of one request, by model.",
    ["model"],
    buckets=_ITL,
)
E2E = Histogram(
    "berth_api_request_duration_seconds",
    "From the request's arrival to its terminal event, by model.",
    ["model"],
    buckets=_LATENCY,
)
TOKENS = Counter(
    "berth_api_tokens_total",
    "Tokens served to finished requests, by tenant and kind (prompt, completion); the "
    "tenant label is a hash of its name unless BERTH_METRICS_TENANTS=named.",
    ["tenant", "kind"],
)

# how tenants appear as label values (BERTH_METRICS_TENANTS): /metrics is often reachable
# by more people than the tenant list should be
_tenant_labels = "hashed"


def configure(tenant_labels: str) -> None:
    """Set how tenants appear on /metrics (called once, by create_app)."""
    global _tenant_labels
    _tenant_labels = tenant_labels


def tenant_label(tenant: str) -> str:
    """The label value for a tenant: ``t-`` and 12 hex digits of its name's SHA-256, the
    name itself, or ``all``. Tenants come from the key ring, so the values are bounded."""
    if _tenant_labels == "named":
        return tenant
    if _tenant_labels == "none":
        return "all"
    return "t-" + hashlib.sha256(tenant.encode()).hexdigest()[:12]


def count_tokens(tenant: str, prompt: int, completion: int) -> None:
    label = tenant_label(tenant)
    TOKENS.labels(label, "prompt").inc(prompt)
    TOKENS.labels(label, "completion").inc(completion)


REQUEUED = Counter(
    "berth_api_requests_requeued_total",
    "Requests queued again because their worker died (`died`) or handed them back while "
    "draining (`handed_back`), as they were (`continued=no`, before any token) or to go on "
    "from their last token (`continued=yes`).",
    ["reason", "continued"],
)
QUEUE_LENGTH = Gauge(
    "berth_queue_length",
    "Requests waiting in a model's ingress stream.",
    ["model"],
    # several API processes read the same stream: the latest reading of any of them
    multiprocess_mode="mostrecent",
)


QUEUE_DEPTH = Gauge(
    "berth_queue_depth",
    "Requests waiting for a model in every lane (interactive, job, batch), those waiting for "
    "a model's first worker included: what its autoscaler scales on. Every served or "
    "declared model.",
    ["model"],
    multiprocess_mode="mostrecent",
)


class RequestTimer:
    """Times one request's tokens; cheap enough to call per event. Started when the
    request arrives, before its model is known: :meth:`for_model` names it once resolved."""

    __slots__ = ("_arrived", "_itl", "_last", "_model", "tenant")

    def __init__(self, arrived: float, tenant: str = "", model: str = "") -> None:
        self._arrived = arrived
        self._last: float | None = None
        self.tenant = tenant
        self.for_model(model)

    def for_model(self, model: str) -> None:
        """Observe under ``model`` (a served model's name)."""
        self._model = model or "unknown"
        # the per-event histogram's child, looked up once rather than per token
        self._itl = ITL.labels(self._model)

    def token(self, now: float) -> None:
        if self._last is None:
            TTFT.labels(self._model).observe(now - self._arrived)
        else:
            self._itl.observe(now - self._last)
        self._last = now

    def done(self, now: float) -> None:
        E2E.labels(self._model).observe(now - self._arrived)
