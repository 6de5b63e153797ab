"""Prometheus metrics of a worker (served by its metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RUNNING = Gauge("berth_worker_running_requests", "Requests inside the engine.")
WAITING = Gauge(
    "berth_worker_waiting_requests", "Requests accepted by the worker but not yet in the engine."
)
GENERATED_TOKENS = Counter("berth_worker_generated_tokens_total", "Completion tokens generated.")
PROMPT_TOKENS = Counter("berth_worker_prompt_tokens_total", "Prompt tokens processed.")
FINISHED = Counter(
    "berth_worker_requests_total", "Requests ended by the worker, by terminal type.", ["type"]
)
ADAPTER_REQUESTS = Counter(
    "berth_worker_adapter_requests_total",
    "Requests served with a LoRA adapter, by adapter (loaded on demand by the engine).",
    ["adapter"],
)
ORPHANS_CANCELLED = Counter(
    "berth_worker_orphans_cancelled_total",
    "Requests cancelled because the API process holding their client died.",
)
DRAINING = Gauge("berth_worker_draining", "1 while the worker drains (given SIGTERM), else 0.")
HANDED_BACK = Counter(
    "berth_worker_handed_back_total",
    "Requests a draining worker handed back to be queued again, by whether they had output "
    "(continued) or not (not started).",
    ["started"],
)
