"""Every Redis key, stream and channel name berth uses, in one place."""

from __future__ import annotations

PREFIX = "berth"

# Pub/sub channel on which workers announce cancels to each other; every worker listens.
CANCEL_CHANNEL = f"{PREFIX}:cancel"
# Set of model names that ever had an ingress stream, so schedulers know what to read.
MODELS_SET = f"{PREFIX}:models"
# Hash worker_id -> heartbeat JSON; each worker also owns a TTL key (see worker_key).
WORKER_KEY_PREFIX = f"{PREFIX}:worker:"
# Consumer group every scheduler replica joins on every ingress stream.
SCHEDULER_GROUP = "schedulers"
# Celery queue prefix; each worker consumes its own queue so placement is exact.
WORKER_QUEUE_PREFIX = f"{PREFIX}.worker."


def ingress_stream(model: str) -> str:
    """The stream of queued requests for one base model."""
    return f"{PREFIX}:ingress:{model}"


def token_channel(request_id: str) -> str:
    """The pub/sub channel on which a request's events are published."""
    return f"{PREFIX}:tokens:{request_id}"


def cancelled_key(request_id: str) -> str:
    """Marker (with a TTL) that a request was cancelled, read by the scheduler before dispatch."""
    return f"{PREFIX}:cancelled:{request_id}"


def worker_key(worker_id: str) -> str:
    """A worker's heartbeat record; it expires when the worker stops heartbeating."""
    return f"{WORKER_KEY_PREFIX}{worker_id}"


def scheduler_key(scheduler_id: str) -> str:
    """A scheduler replica's liveness record, refreshed by its loop; read by `berth check`."""
    return f"{PREFIX}:scheduler:{scheduler_id}"


def worker_queue(worker_id: str) -> str:
    """The Celery queue one worker consumes."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"
