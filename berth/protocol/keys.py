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
# Prefix of each worker's heartbeat record (see worker_key).
WORKER_KEY_PREFIX = f"{PREFIX}:worker:"
# Sorted set worker_id -> epoch seconds its heartbeat record expires (the writer's clock):
# the index readers walk instead of scanning the keyspace. No TTL; each heartbeat re-adds
# its worker, readers drop members whose record is gone (registry.py).
WORKERS_INDEX = f"{PREFIX}:workers"
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
    return f"{PREFIX}:file:{file_id}:content"


def tenant_files(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:files"


def batch_key(batch_id: str) -> str:
    """A batch's record (a hash)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """The list of a batch's job ids, in input order."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


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
    """A worker's heartbeat record (WorkerInfo JSON, a string with a TTL of heartbeat_ttl);
    it expires when the worker stops heartbeating. Indexed in WORKERS_INDEX."""
    return f"{WORKER_KEY_PREFIX}{worker_id}"


def open_adapters(worker_id: str) -> str:
    """The LoRA adapters the schedulers have opened on a worker (adapter -> when its
    quantum starts), shared by every scheduler replica; deleted when the worker is gone."""
    return f"{PREFIX}:lora:{worker_id}"


SCHEDULER_KEY_PREFIX = f"{PREFIX}:scheduler:"
# Sorted set scheduler_id -> epoch seconds its liveness record expires, kept like
# WORKERS_INDEX: read by /ready and `berth check` without a scan.
SCHEDULERS_INDEX = f"{PREFIX}:schedulers"


def scheduler_key(scheduler_id: str) -> str:
    """A scheduler replica's liveness record (a string with a TTL of a few seconds),
    refreshed by its loop; indexed in SCHEDULERS_INDEX."""
    return f"{SCHEDULER_KEY_PREFIX}{scheduler_id}"


def worker_queue(worker_id: str) -> str:
    """The Celery queue one worker consumes."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"
