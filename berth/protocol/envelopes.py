"""Internal envelopes: what crosses Redis and Celery between the API, scheduler and workers."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

# "dispatched" comes from the scheduler (which worker got the request); "requeued" marks a
# job's next attempt after its worker died; the rest come from the worker
EventType = Literal["dispatched", "started", "delta", "finished", "error", "cancelled", "requeued"]
TERMINAL_EVENTS: frozenset[str] = frozenset({"finished", "error", "cancelled"})


class QueuedRequest(BaseModel):
    """One validated request waiting in a model's ingress stream."""

    id: str
    model: str
    adapter: str | None = None
    # the validated, normalised request body (JSON-ready, None fields dropped)
    request: dict[str, Any]
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
    # workers that died holding an earlier attempt: their heartbeat may not have expired
    # yet, so the scheduler must not pick them again
    avoid: list[str] = Field(default_factory=list)


class WorkGroup(BaseModel):
    """Requests for one (model, adapter) sent to one worker as one Celery task."""

    model: str
    adapter: str | None = None
    requests: list[QueuedRequest]


class EventChoice(BaseModel):
    """One choice's progress inside a token event."""

    index: int
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class EventUsage(BaseModel):
    """Token counts of a finished request."""

    prompt_tokens: int
    completion_tokens: int


class TokenEvent(BaseModel):
    """What a worker publishes on a request's token channel.

    ``seq`` increases by one per event of a request, so a reader can tell a gap
    or a duplicate. Exactly one event per request has a terminal ``type``.
    """

    id: str
    seq: int
    type: EventType
    worker: str | None = None
    choices: list[EventChoice] = Field(default_factory=list)
    usage: EventUsage | None = None
    # the OpenAI error body and its HTTP status, on "error" events
    error: dict[str, Any] | None = None
    status: int | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class WorkerInfo(BaseModel):
    """A worker's heartbeat record in the registry."""

    id: str
    model: str
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
    started_at: float = Field(default_factory=time.time)
