"""Per-request cost of berth's tracing hooks: tracing off (no exporter configured, the
default) vs on (an SDK tracer provider with a batching in-memory exporter), against a
baseline that calls no hook at all.

    python -m benchmarks.trace_cost                     # 2000 requests x 64 tokens, 9 rounds
    python -m benchmarks.trace_cost --requests 5000 --tokens 200 --rounds 15

One "request" runs, in one process, every hook a traced request passes through in the
three roles, in order: the API's server span (as HttpMiddleware makes it), ``validate``,
the envelope's carrier, the relay wrapper over ``--tokens`` events; the scheduler's extract,
``queue wait``, ``group and place``, ``dispatch`` and the new carrier; the worker's span and
its engine spans (RequestTrace). Each side runs the same loop; "off" and "on" switch the
module's tracer (one provider is installed for the run, as a process does at start). The
sides alternate round by round; printed: microseconds per request (median over rounds) and
the ratios of the same run. What it leaves out is what a request costs anyway (Redis, the
engine): this is the tracing overhead alone, not a share of a real request's time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from berth.plumbing import tracing
from berth.protocol.envelopes import QueuedRequest
from berth.workers.engine.base import EngineStep
from berth.workers.tracespans import RequestTrace


@dataclass(slots=True)
class _Event:
    """Stands for a TokenEvent: what the relay wrapper reads of one."""

    choices: list[int] = field(default_factory=lambda: [0])
    terminal: bool = False
    type: str = "delta"


async def _events(tokens: int) -> AsyncIterator[_Event]:
    for _ in range(tokens - 1):
        yield _Event()
    yield _Event(terminal=True, type="finished")


async def _request(tokens: int, hooks: bool) -> None:
    """One request's path through the hooks (``hooks`` False: the same loop without them)."""
    queued = QueuedRequest(id="chatcmpl-x", model="m", request={})
    if not hooks:
        async for _ in _events(tokens):
            pass
        return
    # API: the middleware's span, validation, the envelope's carrier, the relay
    server = tracing.start_span("POST /v1/chat/completions", tracing.extract({}), server=True)
    with tracing.current(server):
        with tracing.span("validate"):
            pass
        queued.trace = tracing.carrier()
        async for _ in (
            tracing.traced_relay(_events(tokens)) if tracing.enabled() else _events(tokens)
        ):
            pass
    if server is not None:
        server.end()
    # scheduler: queue wait, grouping and placement, dispatch
    parent = tracing.extract(queued.trace)
    if parent is not None:
        now = time.time_ns()
        tracing.record("queue wait", parent, now - 1000, now)
        tracing.record("group and place", parent, now, now)
        dispatch = tracing.start_span("dispatch", parent, start_ns=now)
        queued.trace = tracing.carrier(dispatch)
        if dispatch is not None:
            dispatch.end()
    # worker: its span and the engine spans
    traced = RequestTrace.start(queued, "w") if queued.trace else None
    if traced is not None:
        traced.generating()
        traced.first_step(EngineStep(queued_s=0.0))
        traced.end("finished")


async def _round(requests: int, tokens: int, hooks: bool) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await _request(tokens, hooks)
    return (time.perf_counter() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.setup("bench", env={}, exporter=exporter)
    on_tracer: Any = tracing._tracer

    def side(name: str) -> float:
        tracing._tracer = on_tracer if name == "on" else None
        result = asyncio.run(_round(args.requests, args.tokens, hooks=name != "baseline"))
        exporter.clear()
        return result

    sides = ("baseline", "off", "on")
    for name in sides:  # warm up
        side(name)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.rounds):
        order = sides if i % 2 == 0 else tuple(reversed(sides))
        for name in order:
            times[name].append(side(name))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"trace cost: {args.requests} requests x {args.tokens} tokens, {args.rounds} rounds "
        "(median microseconds per request, sides alternating)"
    )
    for name in sides:
        print(f"  {name:8s} {med[name]:9.1f} us/request")
    print(
        f"  off - baseline: {med['off'] - med['baseline']:+.1f} us/request "
        f"(ratio {med['off'] / med['baseline']:.3f})"
    )
    print(
        f"  on  - off:      {med['on'] - med['off']:+.1f} us/request "
        f"(ratio {med['on'] / med['off']:.3f}); "
        f"{(med['on'] - med['off']) / args.tokens:.2f} us per token event if all were the relay's"
    )
    tracing.shutdown()


if __name__ == "__main__":
    main()
