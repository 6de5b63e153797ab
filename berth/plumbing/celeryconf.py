"""The Celery settings both sides of the queue agree on (scheduler sends, worker runs)."""

from __future__ import annotations

from typing import Any

RUN_GROUP_TASK = "berth.run_group"

# a publish retries through a Redis restart or a Sentinel failover (~15 s in all) before
# the scheduler sees the error; Celery's default gives up after 0.6 s
_PUBLISH_RETRY = {"max_retries": 12, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def celery_settings(redis_url: str) -> dict[str, Any]:
    """Celery configuration for berth; JSON only, late acks, one message prefetched per slot.

    ``redis_url`` may be a ``redis+sentinel://`` URL: Celery then uses kombu's sentinel
    transport, which asks the sentinels for the primary again after a failover; with
    ``rediss+sentinel://`` it speaks TLS to the sentinels and to the primary.
    """
    # imported here: protocol/ stays free of redis imports at module load
    from berth.plumbing.broker import transport_for
    from berth.plumbing.redisconn import celery_broker, celery_broker_tls

    broker_url, transport = celery_broker(redis_url)
    tls = celery_broker_tls(redis_url)
    return {
        "broker_url": broker_url,
        # berth's transports (workers/broker.py), for the scheduler's publishing too
        "broker_transport": transport_for(broker_url),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # no result backend: results travel as token events and job records, not Celery's
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # the consumer reconnects for as long as it takes, never gives up and exits
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": _PUBLISH_RETRY,
        "broker_transport_options": {"visibility_timeout": 3600} | transport,
        # rediss+sentinel://: the connections to the primary are TLS ones (kombu's pool
        # takes these as redis-py's SSL options); sentinel_kwargs carry the sentinels' own
        **({"broker_use_ssl": tls} if tls is not None else {}),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
