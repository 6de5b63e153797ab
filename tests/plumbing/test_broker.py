"""The worker's Celery consumer (berth/plumbing/broker.py) against a real Valkey killed and
started again under it: a real Celery worker, configured as `berth worker` configures its
own, reconnects on berth's intervals (0.2 s rising to 2 s, not kombu's 2, 4, 6 s ...) and
consumes a task sent once Valkey is back."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import kombu
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from berth.plumbing.broker import RECONNECT
from berth.workers.celery_app import configure_worker
from tests.valkey import Valkey

PROBE_TASK = "tests.broker-probe"
PROBE_QUEUE = "tests-broker"
# a bound that tells "never" from "late"; the tests measure no time
NEVER_S = 30.0


class ConsumerRetries:
    """What the worker's consumer asks kombu for each time it (re)connects: the interval
    settings, and each interval kombu then waits before its next attempt. Records and
    calls through: kombu connects (or fails to) exactly as it would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.policies: list[dict[str, Any]] = []
        self.intervals: list[float] = []
        connect = kombu.Connection._ensure_connection

        def recording(
            conn: kombu.Connection, errback: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            # only the consumer's connection: Celery's consumer passes its own error handler
            if "ensure_connected" not in getattr(errback, "__qualname__", ""):
                return connect(conn, errback, *args, **kwargs)
            self.policies.append({name: kwargs.get(name) for name in RECONNECT})

            def on_error(exc: Exception, interval: float) -> None:
                self.intervals.append(interval)
                errback(exc, interval)

            return connect(conn, on_error, *args, **kwargs)

        monkeypatch.setattr(kombu.Connection, "_ensure_connection", recording)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + NEVER_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def test_consumer_reconnects_on_berths_intervals_after_redis_restarts(
    valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    retries = ConsumerRetries(monkeypatch)
    app = Celery("berth-broker-test")
    configure_worker(app, valkey.url)
    consumed: queue.Queue[str] = queue.Queue()

    @app.task(name=PROBE_TASK)
    def probe(token: str) -> None:
        consumed.put(token)

    def consumes(token: str) -> bool:
        app.send_task(PROBE_TASK, args=[token], queue=PROBE_QUEUE)
        return consumed.get(timeout=NEVER_S) == token

    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=[PROBE_QUEUE],
        loglevel="WARNING",
    ):
        # the consumer is connected and waiting for tasks (no task yet: one ending while
        # Valkey is away would hold the consumer in its late acknowledgement, broker.py)
        assert retries.policies == [RECONNECT]  # the first connection, made at once

        valkey.kill()
        # Valkey stays away until the consumer failed twice, so two intervals are seen
        _wait_for(lambda: len(retries.intervals) >= 2, "the consumer retrying")
        valkey.start()

        assert consumes("after")

    assert retries.policies[1:] and all(policy == RECONNECT for policy in retries.policies)
    start, step, most = (RECONNECT[k] for k in ("interval_start", "interval_step", "interval_max"))
    # kombu's default would have waited 2 s, then 4 s
    assert retries.intervals[:2] == [start, start + step]
    assert max(retries.intervals) <= most
