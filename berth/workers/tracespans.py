"""The worker's spans of one traced request: its run here, its wait in the engine's queue,
its prefill up to the first token, and its streaming to the end.

Built only for a request whose envelope carries a trace (and only when tracing is on); the
engine steps are timed on the first step and at the end, never per token.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from berth.plumbing import tracing
from berth.protocol.envelopes import QueuedRequest

if TYPE_CHECKING:
    from berth.workers.engine.base import EngineStep


class RequestTrace:
    """The ``worker`` span of one request (current while it runs: its log lines and vLLM's
    trace headers see it) and its engine spans, recorded from timestamps."""

    __slots__ = ("_first_ns", "_generate_ns", "_span", "_token")

    def __init__(self, span: Any) -> None:
        self._span = span
        self._generate_ns = self._first_ns = 0
        from opentelemetry import context, trace

        self._token = context.attach(trace.set_span_in_context(span))

    @classmethod
    def start(cls, queued: QueuedRequest, worker_id: str) -> RequestTrace | None:
        parent = tracing.extract(queued.trace)
        if parent is None:
            return None
        span = tracing.start_span(
            "worker",
            parent,
            attributes={
                "berth.request_id": queued.id,
                "berth.worker": worker_id,
                "berth.attempt": queued.attempt,
                "berth.job": queued.job,
            },
        )
        return cls(span)

    def generating(self) -> None:
        """The request goes into the engine now."""
        self._generate_ns = time.time_ns()

    def first_step(self, step: EngineStep) -> None:
        self._first_ns = now = time.time_ns()
        start = self._generate_ns or now
        scheduled = start
        if step.queued_s is not None:
            scheduled = min(now, start + int(step.queued_s * 1e9))
            tracing.record("engine queue", None, start, scheduled)
        tracing.record("prefill and first token", None, scheduled, now)

    def end(self, outcome: str) -> None:
        from opentelemetry import context

        if self._first_ns:
            tracing.record("streaming", None, self._first_ns, time.time_ns())
        self._span.set_attribute("berth.outcome", outcome)
        self._span.end()
        context.detach(self._token)
