"""Prometheus metrics of webhook delivery (served by the scheduler's metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "berth_webhook_attempts_total",
    "Webhook delivery attempts, by outcome (delivered, failed: tried again later, refused: "
    "a forbidden destination, not tried again).",
    ["outcome"],
)
GIVEN_UP = Counter(
    "berth_webhook_given_up_total",
    "Webhooks not delivered within webhook_retry_for_s (kept in berth:webhooks:failed).",
)
DELIVERY_AGE = Histogram(
    "berth_webhook_delivery_seconds",
    "From a job's or batch's end to its webhook's delivery.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
)
