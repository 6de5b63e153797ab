"""Every Redis key, stream and channel name berth uses, in one place."""

from __future__ import annotations

import hashlib

PREFIX = "berth"

# Pub/sub channel on which workers announce cancels to each other; every worker listens.
CANCEL_CHANNEL = f"{PREFIX}:cancel"
# Set of base models that ever had a worker or a queue: such a model with no live worker
# is unavailable (503), not unknown (404); schedulers read their ingress streams.
MODELS_SET = f"{PREFIX}:models"
# Hash adapter name -> JSON {"model": base model, "path": directory}: the adapter registry,
# filled from workers' configuration and the admin API.
ADAPTERS = f"{PREFIX}:adapters"
# Hash model name -> JSON {"adapters": [{"name", "path"?}]}: the model catalog, the models
# offered whether or not a worker runs them (protocol/catalog.py). No TTL: seeded from
# BERTH_MODELS_FILE at each role's start, changed by the admin API (store/catalog.py).
CATALOG = f"{PREFIX}:catalog"
# Prefix of each worker's heartbeat record (see worker_key).
WORKER_KEY_PREFIX = f"{PREFIX}:worker:"
# Sorted set worker_id -> epoch seconds its heartbeat record expires (the writer's clock):
# the index readers walk instead of scanning the keyspace. No TTL; each heartbeat re-adds
# its worker, readers drop members whose record is gone (store/registry.py).
WORKERS_INDEX = f"{PREFIX}:workers"
# Consumer group every scheduler replica joins on every ingress stream.
SCHEDULER_GROUP = "schedulers"
# Celery queue prefix; each worker consumes its own queue so placement is exact.
WORKER_QUEUE_PREFIX = f"{PREFIX}.worker."


# Priority lanes, most urgent first. Interactive requests keep the plain stream name.
LANES = ("interactive", "job", "batch")


def ingress_stream(model: str, lane: str = "interactive") -> str:
    """The stream of queued requests for one base model in one priority lane (one field per
    entry, the QueuedRequest's JSON; store/queue.py owns it); no TTL: the scheduler deletes
    each entry as it acknowledges it, so its length is the queue's."""
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
    """Maps a tenant's Idempotency-Key to the job it created. The client's key is hashed:
    whatever it holds, the Redis key has a fixed length and no client text."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PREFIX}:idem:{tenant}:{digest}"


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


# Every API process's relay subscribes to this channel besides its own delivery channel;
# nothing is published on it (it marks the relays' connections: two subscriptions each).
RELAYS_CHANNEL = f"{PREFIX}:relays"


def delivery_channel(instance: str) -> str:
    """The pub/sub channel of one API process (``instance``, its id in ``APIS_INDEX``): each
    message is one engine step's events (a JSON array of ``TokenEvent``s) of the requests
    that process holds, from one worker; the scheduler's ``dispatched`` and the ends it
    writes come on it too, one event each (store/tokens.py owns both ends).

    One channel per API process, not per request: a worker publishes once per destination
    per step, and the API subscribes once for good. On a Redis Cluster this becomes one
    channel per shard per API process (``SPUBLISH``/``SSUBSCRIBE``), the name carrying the
    shard's hash tag as the request keys written with it (``request_events``) would."""
    return f"{PREFIX}:deliver:{instance}"


# An interactive request's events also go, in the same pipeline as the PUBLISH of their step
# (before it), to a capped stream whose entry ids are "{attempt}-{seq + 1}": the API fills
# from it a gap pub/sub left (a dropped subscriber connection, a lost publish) and a resumed
# stream follows it. The worker refreshes its expiry while it writes; it lives
# REQUEST_EVENTS_TTL_S after the last.
REQUEST_EVENTS_TTL_S = 300
REQUEST_EVENTS_MAXLEN = 16_384


def request_events(request_id: str) -> str:
    """A stream of an interactive request's events (field ``e``: the event's JSON)."""
    return f"{PREFIX}:events:{request_id}"


def event_entry_id(attempt: int, seq: int) -> str:
    """The id of event ``seq`` of ``attempt`` in ``request_events`` (stream ids start at 0-1)."""
    return f"{attempt}-{seq + 1}"


# A run marker: SET NX by the worker that starts an attempt of an interactive request, so a
# second delivery of the same group (a scheduler that died between sending and acking it)
# is skipped. Kept an hour: far past any redelivery of the same message.
RUN_MARK_TTL_S = 3600


def run_key(request_id: str, attempt: int) -> str:
    """String (worker id), RUN_MARK_TTL_S: attempt ``attempt`` of the request has started."""
    return f"{PREFIX}:run:{request_id}:{attempt}"


def resume_key(request_id: str) -> str:
    """String (JSON ``ResumableStream``): a resumable chat stream's owner tenant and how to
    render it; written once its first token streamed, kept request_timeout_s + the grace."""
    return f"{PREFIX}:resume:{request_id}"


def detached_key(request_id: str) -> str:
    """String (a token), the resume grace plus a minute: the client of a resumable stream
    left; whoever set it cancels the request after the grace unless a resume deleted it."""
    return f"{PREFIX}:detached:{request_id}"


# A cancel mark is kept an hour: past any request's time in the queue or on a worker, so the
# scheduler and a worker that read it late (a delivery after a lost publish) still drop it.
CANCEL_MARK_TTL_S = 3600


def cancelled_key(request_id: str) -> str:
    """String "1", CANCEL_MARK_TTL_S: the request was cancelled; read by the scheduler before
    dispatch and by workers (written with a PUBLISH on CANCEL_CHANNEL, store/queue.py)."""
    return f"{PREFIX}:cancelled:{request_id}"


# A worker's heartbeat record lives this long by default (WorkerSettings.heartbeat_ttl; each
# record names its own, WorkerInfo.ttl_s). A reader counts a worker gone only once no newer
# heartbeat of it was read through that long of successful reads (registry.WorkerLiveness):
# after a failover the record may be missing until the worker's next beat.
WORKER_TTL_S = 4.0


def worker_key(worker_id: str) -> str:
    """A worker's heartbeat record (WorkerInfo JSON, a string with a TTL of heartbeat_ttl);
    it expires when the worker stops heartbeating. Indexed in WORKERS_INDEX."""
    return f"{WORKER_KEY_PREFIX}{worker_id}"


def open_adapters(worker_id: str) -> str:
    """The LoRA adapters the schedulers have opened on a worker (adapter -> when its
    quantum starts), shared by every scheduler replica; no TTL: deleted when the worker is
    gone (store/adapters.py: OpenAdapters)."""
    return f"{PREFIX}:lora:{worker_id}"


# A worker's prefix index lives this long after the last placement written to it: a
# worker restarted under its id is another incarnation (another key), and the old key goes
# at the latest after this.
PREFIX_INDEX_TTL_S = 3600


def prefix_index(worker_id: str, incarnation: str) -> str:
    """The prompt-prefix blocks the schedulers sent to one incarnation of a worker: a sorted
    set of block hash (``protocol/prefix_key.py``, 8 raw bytes) -> epoch seconds it was last
    sent there, trimmed to the newest ``prefix_index_blocks``; TTL PREFIX_INDEX_TTL_S from
    the last write (store/prefixes.py: PrefixIndex)."""
    return f"{PREFIX}:prefixes:{worker_id}:{incarnation}"


SCHEDULER_KEY_PREFIX = f"{PREFIX}:scheduler:"
# Sorted set scheduler_id -> epoch seconds its liveness record expires, kept like
# WORKERS_INDEX: read by /ready and `berth check` without a scan.
SCHEDULERS_INDEX = f"{PREFIX}:schedulers"


# A scheduler replica's liveness record lives this long: a replica whose loop stalls longer
# counts as dead to `berth check scheduler` and to the other replicas, which then claim its
# entries (store/queue.py: reclaim).
SCHEDULER_ALIVE_S = 10.0


def scheduler_key(scheduler_id: str) -> str:
    """A scheduler replica's liveness record (a string, SCHEDULER_ALIVE_S), refreshed by its
    loop; indexed in SCHEDULERS_INDEX (store/registry.py)."""
    return f"{SCHEDULER_KEY_PREFIX}{scheduler_id}"


API_KEY_PREFIX = f"{PREFIX}:api:"
# Sorted set api instance id -> epoch seconds its liveness record expires, kept like
# WORKERS_INDEX (store/registry.py): the API processes alive now.
APIS_INDEX = f"{PREFIX}:apis"
# An API process refreshes its liveness record every API_REFRESH_S; it lives API_ALIVE_S.
# A worker treats an API whose record stayed missing for API_ALIVE_S more (Redis may just
# have come back, before the API's next refresh) as dead, with its clients' connections.
API_REFRESH_S = 2.0
API_ALIVE_S = 6.0


def api_key(instance: str) -> str:
    """An API process's liveness record (a string, API_ALIVE_S), refreshed by its supervised
    loop and indexed in APIS_INDEX; interactive requests name it as their ``origin``."""
    return f"{API_KEY_PREFIX}{instance}"


def stream_owner(request_id: str) -> str:
    """String (an API instance id), kept as long as the resume record: the API process that
    resumed a resumable stream and holds its client now, instead of the request's origin."""
    return f"{PREFIX}:owner:{request_id}"


def worker_queue(worker_id: str) -> str:
    """The Celery queue one worker consumes."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"


# --- per-tenant limits (berth/limits/store.py owns these records) ----------------------


def quota_rate(tenant: str, kind: str, window: int) -> str:
    """A tenant's count of ``kind`` (requests or tokens) in one minute ``window`` (a string
    counter); expires two minutes later, once no sliding window can read it."""
    return f"{PREFIX}:quota:{tenant}:{kind}:{window}"


def quota_running(tenant: str) -> str:
    """Sorted set of a tenant's requests in flight at the API, scored by their lease's
    expiry: a request whose API process died stops counting when its lease expires."""
    return f"{PREFIX}:quota:{tenant}:running"


def quota_queue_leases(stream: str) -> str:
    """Sorted set "tenant\\nrequest id" -> lease expiry: the requests each tenant has in one
    ingress stream; the scheduler removes them when it takes the request off the stream."""
    return f"{PREFIX}:quota:queue:{stream}:leases"


def quota_queue_counts(stream: str) -> str:
    """Hash tenant -> its queued requests in one ingress stream (the leases, counted);
    its length is the number of tenants sharing the queue."""
    return f"{PREFIX}:quota:queue:{stream}:counts"


def quota_files(tenant: str) -> str:
    """Sorted set of a tenant's stored files, scored by expiry time (for the file limits)."""
    return f"{PREFIX}:quota:{tenant}:files"


def quota_file_bytes(tenant: str) -> str:
    """Hash file id -> bytes of a tenant's stored files; expires with the last of them."""
    return f"{PREFIX}:quota:{tenant}:file_bytes"


# --- webhooks: the outbox of job and batch end events (berth/store/webhooks.py owns it) --

# Sorted set event id -> epoch seconds (Redis's clock) its next delivery attempt is due. No
# TTL: an event leaves it when delivered or given up (a day by default). A delivery being
# attempted is pushed a lease ahead, so a replica that dies mid-attempt leaves it due again.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"
# Hash event id -> the event's outbox entry (JSON: id, type, created_at, object, url), written
# in the same script as the job's or batch's end; removed with its member of WEBHOOKS_DUE.
WEBHOOKS_EVENTS = f"{PREFIX}:webhooks:events"
# List of at most one element, pushed with each new event: the delivery loop blocks on it
# (BLPOP, its poll interval at most), so a new event goes out at once. No TTL.
WEBHOOKS_WAKE = f"{PREFIX}:webhooks:wake"
# Capped stream (WEBHOOKS_FAILED_MAXLEN, no TTL) of the events given up on: the entry, why, and
# when; for operators (and tests) to read.
WEBHOOKS_FAILED = f"{PREFIX}:webhooks:failed"
WEBHOOKS_FAILED_MAXLEN = 10_000
