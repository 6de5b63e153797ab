"""Internal envelopes: what crosses Redis and Celery between the API, scheduler and workers."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import orjson
from pydantic import BaseModel, Field

from berth.protocol import keys
from berth.protocol.errors import BerthError

RequestKind = Literal["chat", "completion"]
# "dispatched" comes from the scheduler (which worker got the request); "requeued" marks a
# job's next attempt after its worker died, or (with the worker's seq) a request a draining
# worker handed back, for its API to queue again; the rest come from the worker
EventType = Literal["dispatched", "started", "delta", "finished", "error", "cancelled", "requeued"]
TERMINAL_EVENTS: frozenset[str] = frozenset({"finished", "error", "cancelled"})
# the seq of an event not written by the worker running the request (see event_json)
OUTSIDE_SEQ = -1


class Continuation(BaseModel):
    """Where a continued request goes on (``protocol/continuation.py``): its worker numbers
    its events from ``seq`` and counts ``tokens`` completion tokens as already generated."""

    seq: int = Field(ge=0)
    tokens: int = Field(ge=0)


class QueuedRequest(BaseModel):
    """One validated request waiting in a model's ingress stream."""

    id: str
    model: str
    adapter: str | None = None
    # the validated, normalised request body (JSON-ready, None fields dropped)
    request: dict[str, Any]
    # which endpoint's request ``request`` is: a chat completion (the default, which entries
    # written before the kind existed are) or a text completion (``/v1/completions``)
    kind: RequestKind = "chat"
    enqueued_at: float = Field(default_factory=time.time)
    # absolute deadline (epoch seconds) after which a queued request expires
    deadline: float | None = None
    # priority lane: interactive, job or batch (see keys.LANES)
    lane: str = "interactive"
    # set for asynchronous jobs: events go to the job's stream and the result to its record
    job: bool = False
    # which run of a job this is; a job whose worker died runs again with attempt + 1
    attempt: int = 0
    # the API key's tenant, for accounting and fairness
    tenant: str | None = None
    # prompt_cache_key: requests sharing it are placed on the same worker
    affinity: str | None = None
    # workers that died holding an earlier attempt (``worker_ref``: an id, or one
    # incarnation of it): their heartbeat may not have expired yet, so the scheduler must
    # not pick them again; a restarted worker under the same id is another incarnation
    avoid: list[str] = Field(default_factory=list)
    # the API process holding the client's connection (``keys.api_key``); None for jobs,
    # which need no connection. Workers cancel a request whose origin died.
    origin: str | None = None
    # the W3C trace-context carrier ({"traceparent": ..., "tracestate": ...}) of the span
    # that queued it (the scheduler replaces it with its dispatch span's); None untraced
    trace: dict[str, str] | None = None
    # set on an attempt that continues a stream cut mid-way (``request`` then holds the
    # answer so far as the assistant's message to continue)
    continuation: Continuation | None = None


class WorkGroup(BaseModel):
    """Requests for one (model, adapter) sent to one worker as one Celery task."""

    model: str
    adapter: str | None = None
    requests: list[QueuedRequest]
    # the incarnation of the worker it was sent to: a later process under the same worker
    # id drops it, because the waiting APIs and the scheduler already treat that
    # incarnation's requests as lost and queue them again (running both would run a
    # request twice in one engine)
    incarnation: str | None = None


# Token events are msgspec Structs, not pydantic models: the API decodes one per relayed
# token (``decode_event``) and msgspec does it, type checks included, ~6x faster. They are
# the one definition of an event's shape; the worker writes them as JSON (``event_json``).


class EventChoice(msgspec.Struct, kw_only=True):
    """One choice's progress inside a token event."""

    index: int
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class EventUsage(msgspec.Struct, kw_only=True):
    """Token counts of a finished request."""

    prompt_tokens: int
    completion_tokens: int
    # of the prompt, tokens the engine's prefix cache held; of the completion, reasoning
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class TokenEvent(msgspec.Struct, kw_only=True):
    """One event of a request, on its token channel (interactive) or in its job's event
    stream. Written only through ``event_json``, whose docstring defines ``seq``; read
    through ``decode_event``. Exactly one event per request (per job) has a terminal
    ``type``.
    """

    id: str
    seq: int
    type: EventType
    worker: str | None = None
    # the attempt of the request whose run wrote it (see QueuedRequest.attempt): readers
    # follow one attempt, so a duplicate or stale run never mixes into an answer
    attempt: int = 0
    # which process start of ``worker`` wrote (or, on "dispatched", was sent) the event
    incarnation: str | None = None
    choices: list[EventChoice] = msgspec.field(default_factory=list)
    usage: EventUsage | None = None
    # the OpenAI error body and its HTTP status, on "error" events
    error: dict[str, Any] | None = None
    status: int | None = None
    # completion tokens generated so far (every attempt's), on the worker's deltas and on
    # its hand-back: what a continuation counts as done
    tokens: int | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


# what ``decode_event`` raises for bytes that are not a TokenEvent (bad JSON, a missing or
# mistyped field)
MalformedEvent = msgspec.DecodeError
_EVENT_DECODER = msgspec.json.Decoder(TokenEvent)


def decode_event(data: bytes | str) -> TokenEvent:
    """The ``TokenEvent`` of one event's JSON, checked against its types (unknown fields
    are ignored); ``MalformedEvent`` when it is not one."""
    return _EVENT_DECODER.decode(data)


_EVENTS_DECODER = msgspec.json.Decoder(list[TokenEvent])


def events_message(events: list[bytes]) -> bytes:
    """One message carrying several events' JSON (each from ``event_json``, encoded): a JSON
    array, so a reader decodes a whole engine step's events in one call."""
    return b"[" + b",".join(events) + b"]"


def decode_events(data: bytes | str) -> list[TokenEvent]:
    """The events of one ``events_message``, in order; ``MalformedEvent`` when any of them
    is not a ``TokenEvent``."""
    return _EVENTS_DECODER.decode(data)


_STORED_DECODER = msgspec.json.Decoder(list[TokenEvent] | TokenEvent)


def decode_stored_events(data: bytes | str) -> list[TokenEvent]:
    """The events of one entry of a request's event stream: an ``events_message``, or one
    event (as workers wrote before they wrote a step's events together)."""
    decoded = _STORED_DECODER.decode(data)
    return decoded if isinstance(decoded, list) else [decoded]


class ResumableStream(BaseModel):
    """What a resumed chat stream needs: who may resume it, how its chunks are rendered,
    and which attempt (and worker) it follows. Stored at ``keys.resume_key``."""

    tenant: str
    model: str
    created: int
    n: int = 1
    include_usage: bool = False
    stream_reasoning: bool = True
    parallel_tool_calls: bool = True
    attempt: int = 0
    worker: str | None = None
    # the resume grace: how long a worker keeps the stream running once its API died
    grace_s: float = 30.0


class WorkerInfo(BaseModel):
    """A worker's heartbeat record in the registry."""

    id: str
    model: str
    # further names the model answers to (vLLM's --served-model-name takes several; the
    # first is ``model``, the name queues, metrics and answers carry)
    aliases: list[str] = Field(default_factory=list)
    adapters: list[str] = Field(default_factory=list)
    # how many requests the worker accepts at once, and how many it holds now
    capacity: int
    running: int = 0
    # requests inside the engine itself (running or waiting in its scheduler)
    engine_running: int = 0
    # requests accepted by the worker and not yet inside the engine
    waiting: int = 0
    # adapters the engine holds now (least recently used first), and how many it can hold
    loaded_adapters: list[str] = Field(default_factory=list)
    max_loras: int = 0
    # requests the worker holds per adapter (running or waiting), and the mean time from a
    # request's first output to its end (None until one ended): for LoRA placement
    adapter_running: dict[str, int] = Field(default_factory=dict)
    mean_run_s: float | None = None
    # share of the KV cache in use, when the engine reports it
    kv_cache_usage: float | None = None
    queue: str
    heartbeat_at: float = Field(default_factory=time.time)
    # the record's TTL: readers count the worker gone after this long without a newer beat
    ttl_s: float = keys.WORKER_TTL_S
    started_at: float = Field(default_factory=time.time)
    # new at every process start: a worker restarted under the same id is another
    # incarnation, and work held by the previous one is lost ("" from older workers)
    incarnation: str = ""
    # given SIGTERM: it takes no new work and finishes (or hands back) what it holds
    draining: bool = False
    # the last record of a worker that stopped cleanly: gone at once, and not lost
    stopped: bool = False


def worker_ref(worker: str, incarnation: str | None) -> str:
    """One incarnation of a worker, as named in ``QueuedRequest.avoid``: ``id/incarnation``
    (a plain id, without one, names every incarnation)."""
    return f"{worker}/{incarnation}" if incarnation else worker


def event_json(
    request_id: str,
    type_: EventType,
    *,
    seq: int = OUTSIDE_SEQ,
    worker: str | None = None,
    attempt: int = 0,
    error: BerthError | None = None,
    **fields: Any,
) -> str:
    """The JSON of one ``TokenEvent``: every token event and job event is built here.

    ``seq``: the worker running an attempt numbers that attempt's events 0, 1, 2, ... in the
    order it writes them, so a reader can drop a duplicate (a seq at or below one it has
    seen). Every event written by anyone else (the scheduler's ``dispatched`` and
    ``requeued``, a terminal event for a request that never reached a worker, a job
    cancelled through the API or ended with its batch) has ``OUTSIDE_SEQ`` (-1): it is
    outside the worker's numbering and never taken for a duplicate.

    ``attempt``: the attempt of the run that writes it (written only when not 0).

    ``error`` gives the OpenAI error body; on an ``error`` event its HTTP status too.
    ``fields`` are the other ``TokenEvent`` fields (``choices``, ``usage``) as JSON-ready
    values: the worker's hot path builds them without a model.
    """
    event: dict[str, Any] = {"id": request_id, "seq": seq, "type": type_}
    if worker is not None:
        event["worker"] = worker
    if attempt:
        event["attempt"] = attempt
    event.update(fields)
    if error is not None:
        event["error"] = error.body()
        if type_ == "error":
            event["status"] = error.status_code
    # orjson: one event per token on the worker; json.dumps cost ~40x more here
    return orjson.dumps(event).decode()
