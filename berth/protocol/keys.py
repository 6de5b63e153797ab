"""Every Redis key, stream and channel name berth uses, in one place."""

from __future__ import annotations

PREFIX = "berth"

# Pub/sub channel on which workers announce cancels to each other; every worker listens.
CANCEL_CHANNEL = f"{PREFIX}:cancel"
# Set of base models that ever had a worker or a queue: such a model with no live worker
# is unavailable (503), not unknown (404); schedulers read their ingress streams.
MODELS_SET = f"{PREFIX}:models"
# Hash adapter name -> JSON {"model": base model, "path": directory}: the adapter registry,
# filled from workers' configuration and the admin API.
ADAPTERS = f"{PREFIX}:adapters"
# Hash worker_id -> heartbeat JSON; each worker also owns a TTL key (see worker_key).
WORKER_KEY_PREFIX = f"{PREFIX}:worker:"
# Consumer group every scheduler replica joins on every ingress stream.
SCHEDULER_GROUP = "schedulers"
# Celery queue prefix; each worker consumes its own queue so placement is exact.
WORKER_QUEUE_PREFIX = f"{PREFIX}.worker."


# Priority lanes, most urgent first. Interactive requests keep the plain stream name.
LANES = ("interactive", "job", "batch")


def ingress_stream(model: str, lane: str = "interactive") -> str:
    """The stream of queued requests for one base model in one priority lane."""
    if lane == "interactive":
        return f"{PREFIX}:ingress:{model}"
    return f"{PREFIX}:ingress:{model}:{lane}"


def job_key(job_id: str) -> str:
    """A job's record (a hash), with a TTL."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """A job's events: a capped stream, so late or returning readers miss nothing."""
    return f"{PREFIX}:job:{job_id}:events"


def tenant_jobs(tenant: str) -> str:
    """Sorted set of a tenant's job ids by creation time, for listing."""
    return f"{PREFIX}:tenant:{tenant}:jobs"


def idempotency_key(tenant: str, key: str) -> str:
    """Maps a tenant's Idempotency-Key to the job it created."""
    return f"{PREFIX}:idem:{tenant}:{key}"


# Sorted set of jobs sent to a worker and not yet finished (score: dispatch time).
JOBS_INFLIGHT = f"{PREFIX}:jobs:inflight"


def file_key(file_id: str) -> str:
    """An uploaded file's metadata (a hash); its bytes live at file_content_key."""
    return f"{PREFIX}:file:{file_id}"


def file_content_key(file_id: str) -> str:
    """A file's bytes as a list of its lines (split at each newline, so joining them with
    newlines gives the file back), with the file's TTL; while an upload streams in, a
    short TTL, so an upload cut half way leaves nothing behind."""
    return f"{PREFIX}:file:{file_id}:content"


def file_batches(file_id: str) -> str:
    """Set of the unfinished batches reading a file's lines: deleting the file keeps the
    lines until they end (or expire, no sooner than the batches' windows)."""
    return f"{PREFIX}:file:{file_id}:batches"


def tenant_files(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:files"


def batch_key(batch_id: str) -> str:
    """A batch's record (a hash)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """The list of a batch's job ids, in input order."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_feed_lock(batch_id: str) -> str:
    """Lock (redis-py ``Lock``, with a timeout) held while one process queues the next
    window of a batch's lines."""
    return f"{PREFIX}:batch:{batch_id}:feeding"


def tenant_batches(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:batches"


# Set of batch ids not yet finalised, watched by schedulers.
BATCHES_ACTIVE = f"{PREFIX}:batches:active"


def token_channel(request_id: str) -> str:
    """The pub/sub channel on which a request's events are published."""
    return f"{PREFIX}:tokens:{request_id}"


def cancelled_key(request_id: str) -> str:
    """Marker (with a TTL) that a request was cancelled, read by the scheduler before dispatch."""
    return f"{PREFIX}:cancelled:{request_id}"


def worker_key(worker_id: str) -> str:
    """A worker's heartbeat record; it expires when the worker stops heartbeating."""
    return f"{WORKER_KEY_PREFIX}{worker_id}"


def open_adapters(worker_id: str) -> str:
    """The LoRA adapters the schedulers have opened on a worker (adapter -> when its
    quantum starts), shared by every scheduler replica; deleted when the worker is gone."""
    return f"{PREFIX}:lora:{worker_id}"


SCHEDULER_KEY_PREFIX = f"{PREFIX}:scheduler:"


def scheduler_key(scheduler_id: str) -> str:
    """A scheduler replica's liveness record, refreshed by its loop; read by `berth check`."""
    return f"{SCHEDULER_KEY_PREFIX}{scheduler_id}"


def worker_queue(worker_id: str) -> str:
    """The Celery queue one worker consumes."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"
