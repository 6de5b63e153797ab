"""The Celery settings both sides of the queue agree on (scheduler sends, worker runs)."""

from __future__ import annotations

from typing import Any

RUN_GROUP_TASK = "berth.run_group"


def celery_settings(redis_url: str) -> dict[str, Any]:
    """Celery configuration for berth; JSON only, late acks, one message prefetched per slot."""
    return {
        "broker_url": redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": 3600},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
