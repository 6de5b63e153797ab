"""A webhook event's body, shaped as OpenAI's (``{"id", "object": "event", "type",
"created_at", "data": {"id"}}``), and when a failed one is tried again (pure)."""

from __future__ import annotations

import json
import random

from berth.store.webhooks import Delivery


def event_body(delivery: Delivery) -> bytes:
    """The JSON body; the same bytes on every attempt of the event."""
    event = {
        "id": delivery.id,
        "object": "event",
        "type": delivery.type,
        "created_at": int(delivery.created_at),
        "data": {"id": delivery.object},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def retry_delay(age_s: float, first_s: float, max_s: float, jitter: float = 0.1) -> float:
    """Wait before the next attempt of an event ``age_s`` old: as long as its age (at least
    ``first_s``, at most ``max_s``), so the waits double without counting attempts (5 s,
    10 s, 20 s, ...) and nothing but the event's own time is kept; drawn within ``jitter``
    of that, so events that failed together spread out."""
    base = min(max_s, max(first_s, age_s))
    return base * random.uniform(1 - jitter, 1 + jitter)
