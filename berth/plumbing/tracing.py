"""OpenTelemetry traces of a request across the API, the scheduler and the worker.

Off by default, and then free: unless an exporter is configured through the standard
``OTEL_*`` variables, :func:`setup` installs nothing, opentelemetry is never imported, and
every helper here returns at its first line (``_tracer is None``). On:

- ``OTEL_SDK_DISABLED=true``: off, whatever else is set.
- ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none`` (comma-separated); unset, it is
  ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, else off.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL``): ``grpc`` (default) or
  ``http/protobuf``; the exporters read their endpoint, headers and timeout themselves.
- ``OTEL_SERVICE_NAME`` (default ``berth-<role>``), ``OTEL_RESOURCE_ATTRIBUTES``.
- ``BERTH_TRACES_DIR``: for tests, each process also writes its finished spans as JSON lines
  to ``<dir>/<role>-<pid>.jsonl``, at once (no batching), so a test can read them back.

A trace crosses processes as a W3C trace-context carrier (``{"traceparent": ...}``): from
the client's headers into the API, in ``QueuedRequest.trace`` through the ingress stream and
the Celery task to the worker, and from there to vLLM as its ``trace_headers``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.trace import Span, Tracer

TRACES_DIR_ENV = "BERTH_TRACES_DIR"
T = TypeVar("T")

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def _exporters_wanted(env: Mapping[str, str]) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for (empty: tracing stays off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        wanted = [name.strip() for name in named.split(",") if name.strip()]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        wanted = ["otlp"]
    else:
        wanted = []
    wanted = [name for name in wanted if name != "none"]
    unknown = set(wanted) - {"otlp", "console"}
    if unknown:
        raise SystemExit(
            f"OTEL_TRACES_EXPORTER names {', '.join(sorted(unknown))}; berth supports otlp, "
            "console and none"
        )
    return wanted


def setup(role: str, env: Mapping[str, str] | None = None, exporter: Any = None) -> bool:
    """Install a tracer provider for this process when ``env`` (default: the environment)
    configures an exporter, or ``exporter`` (a SpanExporter: benchmarks) is given; returns
    whether tracing is on. Call once, at start."""
    global _tracer, _provider
    env = os.environ if env is None else env
    wanted = _exporters_wanted(env)
    traces_dir = env.get(TRACES_DIR_ENV)
    if not wanted and not traces_dir and exporter is None:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {"berth.role": role}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"berth-{role}"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in wanted:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if traces_dir:
        path = os.path.join(traces_dir, f"{role}-{os.getpid()}.jsonl")
        provider.add_span_processor(SimpleSpanProcessor(_file_exporter(path)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("berth")
    return True


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise SystemExit(
        f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}; berth supports grpc and http/protobuf"
    )


def _file_exporter(path: str) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """Finished spans as one JSON object a line (ids in hex), for tests to read."""

        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = [json.dumps(span_record(span)) + "\n" for span in spans]
            with self._lock, open(path, "a", encoding="utf-8") as out:
                out.writelines(lines)
            return SpanExportResult.SUCCESS

    return JsonLinesExporter()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "service": span.resource.attributes.get("service.name"),
        "attributes": dict(span.attributes or {}),
    }


def shutdown() -> None:
    """Flush and stop the exporters (at process exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def enabled() -> bool:
    return _tracer is not None


# -- propagation -------------------------------------------------------------------------


def extract(carrier: Mapping[str, str] | None) -> Context | None:
    """The context a W3C carrier (headers, or ``QueuedRequest.trace``) names; None when
    tracing is off or the carrier has no valid ``traceparent`` (a new trace starts)."""
    if _tracer is None or not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def carrier(span: Span | None = None) -> dict[str, str] | None:
    """The W3C carrier of ``span`` (default: the current span) to send to the next process;
    None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = trace.set_span_in_context(span) if span is not None else None
    out: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(out, context)
    return out or None


def current_trace_id() -> str | None:
    """The trace id of the current span (32 hex digits), for log lines; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


# -- spans -------------------------------------------------------------------------------


def start_span(
    name: str,
    parent: Context | None = None,
    *,
    start_ns: int | None = None,
    attributes: Mapping[str, Any] | None = None,
    server: bool = False,
) -> Span | None:
    """A span the caller ends (``span.end()``); its parent is ``parent``, else the current
    span. None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return _tracer.start_span(
        name,
        context=parent,
        kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
        attributes=attributes,
        start_time=start_ns,
    )


def record(
    name: str,
    parent: Context | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """A span that already happened, from timestamps taken on the way (epoch ns)."""
    span = start_span(name, parent, start_ns=start_ns, attributes=attributes)
    if span is not None:
        span.end(end_time=max(start_ns, end_ns))


# what span() and current() return when tracing is off: no generator, no allocation
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """A child of the current span for the ``with`` block, current inside it."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def current(span: Span | None) -> contextlib.AbstractContextManager[Any]:
    """Make ``span`` the current one for the block (its children and log lines see it)."""
    if span is None:
        return _OFF
    from opentelemetry import trace

    return trace.use_span(span, end_on_exit=False)


async def traced_relay(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """``events`` (a request's token events, as the API relays them) inside a ``relay`` span,
    from now until the terminal event; the first output and the end are events on it. Wrap
    only when tracing is on: the wrapper is a step per token."""
    relay = start_span("relay")
    if relay is None:
        async for event in events:
            yield event
        return
    first = True
    try:
        async for event in events:
            if first and getattr(event, "choices", None):
                first = False
                relay.add_event("first_token")
            if getattr(event, "terminal", False):
                relay.set_attribute("berth.terminal", str(getattr(event, "type", "")))
            yield event
    finally:
        relay.end()
