"""The ingress queue: each base model's lane streams (``keys.ingress_stream``), read by every
scheduler replica through one consumer group, and the marks that travel beside a queued
request: its cancel mark (``keys.cancelled_key``) and the run marker of an interactive
attempt (``keys.run_key``).

A request's life in the queue, and the one place for each of its commands:

- ``enqueue``, ``lengths``: the API adds the entry, and reads the queue's length (a job's
  entry is added by ``create_job.lua`` / ``requeue_job.lua``, which get the entry's field
  name from here);
- ``create_group``, ``read``: a scheduler replica joins the group and reads;
- ``acknowledge``: once dispatched or ended, the entry is acknowledged and deleted, so a
  stream's length is the queue's;
- ``consumers``, ``reclaim``: a live replica takes over a dead one's unacknowledged entries;
- ``notify_waiting``: the waiting API hears that its request left the queue;
- ``mark_cancelled``, ``cancel``, ``cancelled``: the cancel mark and its announcement;
- ``start_runs``: a worker checks the marks and sets the run markers of a group it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store import tokens

# The one field of an ingress entry: the QueuedRequest's JSON. The Lua scripts that queue a
# job (create_job.lua, requeue_job.lua) take it as an argument from store/jobs.py.
ENTRY_FIELD = "r"
_ENTRY_FIELD_BYTES = ENTRY_FIELD.encode()
# pending entries of a dead replica claimed per stream and pass; the rest wait for the next
RECLAIM_COUNT = 1000

# an entry as read: its id and fields (None or empty: deleted after it was delivered)
Entry = tuple[str, Mapping[bytes, bytes] | None]
# a read: per stream, its entries
Read = list[tuple[str, list[Entry]]]


def entry_payload(queued: QueuedRequest) -> str:
    """The JSON an ingress entry (and a job's record, to queue it again) carries."""
    return queued.model_dump_json(exclude_none=True)


def encode_entry(queued: QueuedRequest) -> dict[FieldT, EncodableT]:
    """An ingress entry's fields."""
    return {ENTRY_FIELD: entry_payload(queued)}


def decode_entry(fields: Mapping[bytes, bytes]) -> QueuedRequest | None:
    """The queued request of an entry's fields; None when the entry is malformed."""
    try:
        return QueuedRequest.model_validate_json(fields[_ENTRY_FIELD_BYTES])
    except (ValidationError, KeyError):
        return None


# -- the API's side -----------------------------------------------------------------------


async def enqueue(redis: Redis, queued: QueuedRequest) -> None:
    """Add the request to its model's stream in its lane (whoever admitted it)."""
    await redis.xadd(keys.ingress_stream(queued.model, queued.lane), encode_entry(queued))


async def lengths(redis: Redis, streams: Sequence[str]) -> list[int]:
    """The number of queued requests in each stream, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
    return [int(n) for n in await pipe.execute()]


# -- the scheduler's side -----------------------------------------------------------------


async def create_group(redis: Redis, stream: str) -> None:
    """Make the schedulers' consumer group on ``stream`` (and the stream), unless it exists."""
    try:
        # id 0: entries queued before any scheduler existed are read too
        await redis.xgroup_create(stream, keys.SCHEDULER_GROUP, id="0", mkstream=True)
    except ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def _entries(raw: Any) -> list[Entry]:
    return [(entry_id.decode(), fields) for entry_id, fields in raw]


async def read(
    redis: Redis,
    consumer: str,
    streams: Iterable[str] | Mapping[str, str],
    start: str,
    count: int,
    block: int | None,
) -> Read:
    """XREADGROUP as ``consumer``: new entries (``start`` ">"), or those delivered to it and
    not acknowledged ("0", or a mapping of stream to the id to read on after); per stream,
    its entries read."""
    after = dict(streams) if isinstance(streams, Mapping) else dict.fromkeys(streams, start)
    # redis-py types replies loosely; with bytes responses this is [(stream, [(id, fields)])]
    reply: Any = await redis.xreadgroup(
        keys.SCHEDULER_GROUP, consumer, after, count=count, block=block
    )
    return [(stream.decode(), _entries(entries)) for stream, entries in reply or []]


def acknowledge(pipe: Any, stream: str, entry_ids: Sequence[str]) -> None:
    """Acknowledge and delete entries (``pipe``: the pipeline that runs it with whatever
    goes with the entries leaving the queue). Deleted, so XLEN is the queue length the API
    bounds."""
    pipe.xack(stream, keys.SCHEDULER_GROUP, *entry_ids)
    pipe.xdel(stream, *entry_ids)


def notify_waiting(client: Any, request: QueuedRequest, event: str) -> Any:
    """Tell the API waiting for an interactive request that it left the queue (``event``:
    ``dispatched``, or its terminal event when it ended there), on the channel of the API
    process that queued it (``store/tokens.py: notify``); ``client``: the store's Redis, or
    a pipeline to add it to."""
    return tokens.notify(client, request.origin, event)


async def consumers(redis: Redis, stream: str) -> list[tuple[str, int]]:
    """(name, number of entries it holds unacknowledged) of each scheduler reading
    ``stream``; none when the stream or its group is missing."""
    try:
        raw: Any = await redis.xinfo_consumers(stream, keys.SCHEDULER_GROUP)
    except ResponseError:
        return []
    out = []
    for consumer in raw:
        name = consumer["name"]
        out.append((name.decode() if isinstance(name, bytes) else str(name), consumer["pending"]))
    return out


async def reclaim(redis: Redis, stream: str, dead: str, pending: int, consumer: str) -> list[Entry]:
    """Claim for ``consumer`` the entries that the dead replica ``dead`` holds (``pending``
    of them, as ``consumers`` read), up to RECLAIM_COUNT; the dead replica leaves the group
    once it holds nothing more."""
    claimed: Any = []
    if pending:
        held: Any = await redis.xpending_range(
            stream, keys.SCHEDULER_GROUP, "-", "+", RECLAIM_COUNT, consumername=dead
        )
        ids = [p["message_id"] for p in held]
        claimed = await redis.xclaim(stream, keys.SCHEDULER_GROUP, consumer, 0, ids)
    if not pending or len(claimed) == pending:
        await redis.xgroup_delconsumer(stream, keys.SCHEDULER_GROUP, dead)
    return _entries(claimed)


# -- cancel marks and run markers ---------------------------------------------------------


def mark_cancelled(pipe: Any, request_id: str, *, tell_workers: bool = True) -> None:
    """Add to ``pipe`` the request's cancel mark (the scheduler drops it, a worker does not
    start it) and, with ``tell_workers``, the announcement that makes a worker running it
    abort."""
    pipe.set(keys.cancelled_key(request_id), b"1", ex=keys.CANCEL_MARK_TTL_S)
    if tell_workers:
        pipe.publish(keys.CANCEL_CHANNEL, request_id)


async def cancel(redis: Redis, request_id: str) -> None:
    """Mark a request cancelled and tell the workers, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    mark_cancelled(pipe, request_id)
    await pipe.execute()


async def cancelled(redis: Redis, request_ids: Sequence[str]) -> list[bool]:
    """Whether each request has a cancel mark."""
    marks = await redis.mget([keys.cancelled_key(r) for r in request_ids])
    return [mark is not None for mark in marks]


async def start_runs(
    redis: Redis, requests: Sequence[QueuedRequest], worker_id: str
) -> tuple[list[bool], list[bool]]:
    """One round trip as a worker starts a group: per request, whether it was cancelled,
    and whether this is the first run of its attempt (the run marker of an interactive one
    set here now; a job is claimed through its record instead, so always True)."""
    pipe = redis.pipeline(transaction=False)
    pipe.mget([keys.cancelled_key(q.id) for q in requests])
    for q in requests:
        if not q.job:
            pipe.set(keys.run_key(q.id, q.attempt), worker_id, nx=True, ex=keys.RUN_MARK_TTL_S)
    marks, *claims = await pipe.execute()
    claimed = iter(claims)
    return (
        [mark is not None for mark in marks],
        [q.job or bool(next(claimed)) for q in requests],
    )
