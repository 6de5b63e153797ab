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

  - an interactive request's event is published, with every other event of the step for
    the same API process (the request's ``origin``), in one message on that process's
    channel (``keys.delivery_channel``), and goes to the request's short-lived stream
    (``keys.request_events``) with the request's other events of the last
    ``STORE_EVERY_S``, as one entry whose id is the last one's
    (``keys.event_entry_id(attempt, seq)``); the first and the last event are in the
    stream before they are published (``store/tokens.py``). The stream's expiry is
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

import asyncio
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
    events_message,
)
from berth.protocol.errors import BerthError, EngineFailure
from berth.protocol.output import CompletionAssembler
from berth.store import tokens
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
        "_store_timer",
        "_stored_at",
        "_target",
        "_unstored",
        "_unstored_seq",
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
        # a continued stream goes on from the seq its client has reached
        self._seq = queued.continuation.seq if queued.continuation else 0
        self._lost = False
        self._refreshed = -float("inf")
        # published events not yet in the stream, the seq of the last, and when it was last
        # written (with the timer that writes them within STORE_EVERY_S)
        self._unstored: list[bytes] = []
        self._unstored_seq = -1
        self._stored_at = -float("inf")
        self._store_timer: asyncio.TimerHandle | None = None
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
        fields: dict[str, Any] = {
            "choices": [_choice_json(c) for c in step.choices],
            # what a continuation of this stream counts as generated (continuation.py)
            "tokens": step.completion_tokens,
        }
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
            written = self._write_event(payload.encode(), seq, terminal, force)
        else:
            written = self._write_job(type_, payload, terminal, force)
        if written:
            self._seq += 1
            if terminal:
                metrics.FINISHED.labels(type_).inc()
        return written

    def _write_event(self, payload: bytes, seq: int, terminal: bool, force: bool) -> bool:
        """An interactive request's event: published now, for its API process; written to
        its stream at once when it is the first or the last, or the last write is
        ``STORE_EVERY_S`` old, else with the next write (a timer makes that one within
        ``STORE_EVERY_S``): one XADD for the events of that while, not one per event."""
        now = time.monotonic()
        due = terminal or now - self._stored_at >= tokens.STORE_EVERY_S
        if self._channel is not None:
            if not self._publisher.event(self._channel, payload, force=force):
                return False
        elif not self._publisher.has_room() and not force:
            return False
        else:
            due = True  # nobody is told: the stream alone carries it (no origin)
        self._unstored.append(payload)
        self._unstored_seq = seq
        if due:
            self._store(now, terminal)
        elif self._store_timer is None:
            self._store_timer = asyncio.get_running_loop().call_later(
                tokens.STORE_EVERY_S, self._store_due
            )
        return True

    def _store_due(self) -> None:
        self._store_timer = None
        if self._unstored:
            self._store(time.monotonic(), False)

    def _store(self, now: float, terminal: bool) -> None:
        """The events not yet in the stream, as one entry; the stream's expiry is refreshed
        now and then, and at the end. Never refused: one write per request per while."""
        if self._store_timer is not None:
            self._store_timer.cancel()
            self._store_timer = None
        expire = None
        if terminal or now - self._refreshed > keys.REQUEST_EVENTS_TTL_S / 4:
            expire = keys.REQUEST_EVENTS_TTL_S
            self._refreshed = now
        self._publisher.store(
            self._target,
            keys.event_entry_id(self._attempt, self._unstored_seq),
            events_message(self._unstored),
            keys.REQUEST_EVENTS_MAXLEN,
            expire,
            force=True,
        )
        self._unstored = []
        self._stored_at = now

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
