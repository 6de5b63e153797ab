"""One request's events as the worker writes them: numbered here, handed to the publisher.

The path of a token from the engine to Redis is runtime -> this module -> publisher:

- ``workers/runtime.py`` serves a request and hands each engine step (and the request's
  start and end) to its ``RequestEvents``; it never builds an event itself.
- Here each event gets its ``seq``: 0 for ``started``, then one more per event written, so
  a reader finds a gap by ``seq``. The number moves on only once the publisher took the
  write; a write the publisher refuses (its buffer full while Redis is away) leaves it on
  the first event lost, and the error event that ends such a request carries that ``seq``.
  The event's JSON is built once, by ``protocol.envelopes.event_json``.
- Then it is handed to ``workers/publisher.py``, which sends every event of a loop turn to
  Redis in one round trip, in order:

  - an interactive request's event goes to its short-lived stream
    (``keys.request_events``, entry id ``keys.event_entry_id(attempt, seq)``), and with
    every other event of the step for the same API process (the request's ``origin``) it
    is published in one message on that process's channel (``keys.delivery_channel``),
    after the XADDs, in one pipeline (``store/tokens.py``); the stream's expiry is
    refreshed now and then and by the last event. The API's relay
    (``api/delivery/relay.py``) takes the step off pub/sub and fans it out to its requests,
    and ``api/delivery/events.py`` fills a gap in ``seq`` from the stream.
  - a job's event is appended to its capped stream (``keys.job_events``), and its result
    is assembled here as its events go by; its terminal event goes through the job
    store's finishing script (``store/jobs.py``: ``JobStore.finish_call``), which stores
    the status, the result and that last event together. The API's job routes follow the
    stream (``api/routes/jobs.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from berth.protocol import keys
from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.envelopes import (
    TERMINAL_EVENTS,
    EventType,
    QueuedRequest,
    decode_event,
    event_json,
)
from berth.protocol.errors import BerthError, EngineFailure
from berth.protocol.output import CompletionAssembler
from berth.store.jobs import EVENTS_MAXLEN, JobStore, terminal_status
from berth.workers import metrics
from berth.workers.engine.base import ChoiceDelta, EngineStep
from berth.workers.publisher import EventPublisher

log = logging.getLogger(__name__)


def _choice_json(delta: ChoiceDelta) -> dict[str, Any]:
    """A choice's delta as the event carries it: only the fields it has."""
    out: dict[str, Any] = {"index": delta.index}
    if delta.content:
        out["content"] = delta.content
    if delta.reasoning_content:
        out["reasoning_content"] = delta.reasoning_content
    if delta.tool_calls:
        out["tool_calls"] = delta.tool_calls
    if delta.logprobs is not None:
        out["logprobs"] = delta.logprobs
    if delta.finish_reason is not None:
        out["finish_reason"] = delta.finish_reason
    return out


class RequestEvents:
    """Numbers one request's events and writes them: for a waiting client to its
    short-lived event stream and its API process's pub/sub channel (one pipeline per step),
    or for a job into its event stream, ending with the script that stores its result. The
    hot path builds JSON directly.

    When the publisher's buffer is full (Redis away too long), the request's later events
    are dropped and, once the buffer drains, one error event ends it at the first seq that
    was dropped: the reader sees an answer that ends with an error, never a truncated one."""

    __slots__ = (
        "_assembler",
        "_attempt",
        "_channel",
        "_id",
        "_incarnation",
        "_jobs",
        "_lost",
        "_publisher",
        "_queued",
        "_refreshed",
        "_seq",
        "_target",
        "_worker",
    )

    def __init__(
        self,
        publisher: EventPublisher,
        queued: QueuedRequest,
        worker: str,
        jobs: JobStore,
        incarnation: str | None = None,
    ) -> None:
        self._publisher = publisher
        self._queued = queued
        self._id = queued.id
        self._attempt = queued.attempt
        self._worker = worker
        self._incarnation = incarnation
        self._jobs = jobs
        self._seq = 0
        self._lost = False
        self._refreshed = -float("inf")
        self._assembler: CompletionAssembler | None = None
        # the API process holding the client: its channel carries the request's events
        self._channel = keys.delivery_channel(queued.origin) if queued.origin else None
        self._target = keys.job_events(queued.id) if queued.job else keys.request_events(queued.id)

    def collect_result(self, request: ChatCompletionRequest) -> None:
        """Jobs keep their assembled result; call once the request is parsed."""
        if self._queued.job:
            self._assembler = CompletionAssembler(
                self._id,
                request.model,
                int(time.time()),
                request.n,
                parallel_tool_calls=request.parallel_tool_calls is not False,
            )

    def step(self, step: EngineStep, type_: EventType = "delta") -> None:
        """An engine step's choices: a delta, or (``finished``, ``cancelled``) the last
        event, which also carries the request's token counts."""
        fields: dict[str, Any] = {"choices": [_choice_json(c) for c in step.choices]}
        if type_ != "delta":
            metrics.PROMPT_TOKENS.inc(step.prompt_tokens)
            metrics.GENERATED_TOKENS.inc(step.completion_tokens)
            fields["usage"] = {
                "prompt_tokens": step.prompt_tokens,
                "completion_tokens": step.completion_tokens,
                "cached_tokens": step.cached_tokens,
                "reasoning_tokens": step.reasoning_tokens,
            }
        self.emit(type_, **fields)

    def error(self, err: BerthError) -> None:
        self.emit("error", error=err)

    def emit(self, type_: EventType, *, error: BerthError | None = None, **fields: Any) -> None:
        """Write the next event (``fields``: its body); it takes the next ``seq``."""
        if self._lost:
            return  # the error event written once the publisher drains ends this request
        if self._write(type_, error, fields, force=False):
            return
        self._lost = True
        log.error("request %s: event buffer full; it ends with an error", self._id)
        self._publisher.when_drained(self._end_lost)

    def _write(
        self, type_: EventType, error: BerthError | None, fields: dict[str, Any], force: bool
    ) -> bool:
        """Hand event ``seq`` to the publisher; True when it took it, and only then does the
        next event get the next ``seq``."""
        seq = self._seq
        payload = event_json(
            self._id,
            type_,
            seq=seq,
            worker=self._worker,
            attempt=self._attempt,
            incarnation=self._incarnation,
            error=error,
            **fields,
        )
        terminal = type_ in TERMINAL_EVENTS
        if not self._queued.job:
            # the stream's expiry is refreshed now and then, and at the end
            now = time.monotonic()
            expire = None
            if terminal or now - self._refreshed > keys.REQUEST_EVENTS_TTL_S / 4:
                expire = keys.REQUEST_EVENTS_TTL_S
            written = self._publisher.event(
                self._channel,
                self._target,
                keys.event_entry_id(self._attempt, seq),
                payload,
                keys.REQUEST_EVENTS_MAXLEN,
                expire,
                force=force,
            )
            if written and expire is not None:
                self._refreshed = now
        else:
            written = self._write_job(type_, payload, terminal, force)
        if written:
            self._seq += 1
            if terminal:
                metrics.FINISHED.labels(type_).inc()
        return written

    def _write_job(self, type_: EventType, payload: str, terminal: bool, force: bool) -> bool:
        """A job's event into its stream; its last one through the script that ends the job."""
        parsed = decode_event(payload)
        if not terminal:
            if not self._publisher.append(self._target, payload, EVENTS_MAXLEN, force=force):
                return False
            if self._assembler is not None:
                self._assembler.add(parsed)
            return True
        result = None
        if type_ == "finished" and self._assembler is not None:
            self._assembler.add(parsed)
            result = self._assembler.response(parsed)
        script, script_keys, args = self._jobs.finish_call(
            self._id,
            self._queued.attempt,
            terminal_status(type_, parsed.status),
            result=result,
            error=parsed.error,
            event=payload,
        )
        return self._publisher.script(script, script_keys, args, force=force)

    def _end_lost(self) -> None:
        self._write(
            "error",
            EngineFailure("events of this request were lost while Redis was unreachable"),
            {},
            force=True,
        )
