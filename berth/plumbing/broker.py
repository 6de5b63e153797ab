"""The worker's Celery transport: kombu's Redis (or Sentinel) transport, made to survive
the loss of its connection while tasks run.

When the broker connection drops, kombu closes the consumer's channel and, by default,
tries to push the messages of running tasks back onto their queue (``restore_unacked``)
through the connection that was just released; that raises an AttributeError Celery
calls unrecoverable, and the worker process exits. Even where it worked it would be wrong
for berth: the tasks keep running on their threads, so a restored message runs a request
a second time. The channel here leaves unacknowledged messages where they are: tasks
acknowledge them when they end, and a message of a process that really died is restored
by kombu's visibility timeout.

A task that ends after its channel was closed acknowledges its message through a client
of berth's own (the channel's connection is gone; kombu would raise the same
AttributeError), so the message is not run again an hour later.

The scheduler publishes through the same transport (``protocol/celeryconf.py``): its
channels hold no unacknowledged messages, so only the Sentinel connection class matters
there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual

from berth.plumbing.redisconn import (
    SyncSentinelConnection,
    SyncSentinelSSLConnection,
    sync_redis_client,
)

log = logging.getLogger(__name__)

_fallback_url: str | None = None
_fallback: Any = None
_fallback_lock = threading.Lock()


def use_redis(url: str) -> None:
    """The Redis URL (berth's form) through which late acknowledgements go."""
    global _fallback_url
    _fallback_url = url


def _fallback_client() -> Any:
    global _fallback
    with _fallback_lock:
        if _fallback is None:
            if _fallback_url is None:
                raise RuntimeError("berth.plumbing.broker.use_redis was not called")
            _fallback = sync_redis_client(_fallback_url)
        return _fallback


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: Any) -> None:
        if self.channel.connection is not None:
            try:
                super().ack(delivery_tag)
                return
            except Exception as err:
                log.warning("acknowledging a task failed (%s); trying again", err)
        # the channel was closed under the running task, or its connection dropped
        try:
            pipe = _fallback_client().pipeline()
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.hdel(self.unacked_key, delivery_tag)
            pipe.execute()
        except Exception as err:
            log.warning("acknowledging a task after its channel closed failed: %s", err)
        kombu_virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    do_restore = False
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    do_restore = False
    QoS = QoS
    # asks the sentinels on every reconnect, also inside a command's retry (redisconn.py)
    connection_class = SyncSentinelConnection
    # rediss+sentinel://: Celery's broker_use_ssl (celeryconf.py) selects this one (redis-py's
    # SSL twin of kombu's class, which mypy cannot see is one)
    connection_class_ssl = SyncSentinelSSLConnection  # type: ignore[assignment]


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str:
    """The ``broker_transport`` setting for a broker URL from ``redisconn.celery_broker``."""
    if broker_url.startswith("sentinel://"):
        return f"{__name__}:SentinelTransport"
    return f"{__name__}:Transport"


# between attempts to reach the broker again: kombu's default (2, 4, 6 ... 30 s) kept a
# worker idle for about 15 s after Redis returned or a Sentinel failover had finished
RECONNECT = {"interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class BrokerConsumer(Consumer):
    """Celery's consumer, reconnecting within about two seconds of the broker's return."""

    def ensure_connected(self, conn: Any) -> Any:
        reach = conn.ensure_connection
        # Celery calls ensure_connection without intervals; these take their place
        conn.ensure_connection = lambda *args, **kwargs: reach(*args, **{**RECONNECT, **kwargs})
        return super().ensure_connected(conn)
