"""The worker's Celery app and its single task, which hands a group to the engine host; and the
hook that starts the host's drain when Celery begins its warm shutdown (SIGTERM)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

from berth.plumbing.broker import BrokerConsumer, use_redis
from berth.plumbing.celeryconf import RUN_GROUP_TASK, celery_settings
from berth.workers.runtime import EngineHost


def configure_worker(app: Celery, redis_url: str) -> None:
    """berth's Celery settings, with the transport and consumer of broker.py."""
    app.conf.update(celery_settings(redis_url))
    app.conf.worker_consumer = f"{BrokerConsumer.__module__}:{BrokerConsumer.__qualname__}"
    use_redis(redis_url)


def create_worker_app(redis_url: str, host: EngineHost) -> Celery:
    """A Celery app whose task runs groups on ``host``'s engine."""
    app = Celery("berth-worker")
    configure_worker(app, redis_url)

    @app.task(name=RUN_GROUP_TASK)
    def run_group(group: dict[str, Any]) -> None:
        host.run_group(group)

    def drain(how: str = "Warm", **_: Any) -> None:
        # SIGTERM (or a first Ctrl-C): Celery's warm shutdown stops taking groups and waits
        # for the running ones, which the drain ends within drain_s (runtime.py)
        if how == "Warm":
            host.drain()

    worker_shutting_down.connect(drain, weak=False)
    return app
