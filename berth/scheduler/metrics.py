"""Prometheus metrics of a scheduler replica (served by its metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GROUP_SIZE = Histogram(
    "berth_scheduler_group_size",
    "Requests per dispatched group.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
DISPATCH_LATENCY = Histogram(
    "berth_scheduler_dispatch_latency_seconds",
    "From a request's enqueue to its dispatch to a worker.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
DISPATCHED = Counter(
    "berth_scheduler_dispatched_requests_total", "Requests sent to workers.", ["model"]
)
DROPPED = Counter(
    "berth_scheduler_dropped_requests_total",
    "Requests ended before dispatch, by reason (cancelled, no_worker).",
    ["reason"],
)
ADAPTER_SWITCHES = Counter(
    "berth_scheduler_adapter_switches_total",
    "LoRA slots handed from one adapter to another (an adapter closed on a worker for a "
    "waiting one).",
)
PUBLISHES_WAITING = Gauge(
    "berth_scheduler_publishes_waiting",
    "Celery publishes asked for and not yet taken by the broker (above 0 for long: the "
    "broker is away and kombu retries).",
)
