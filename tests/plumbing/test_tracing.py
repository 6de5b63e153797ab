"""plumbing/tracing.py: which OTEL_* settings turn tracing on, and the trace id on log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from berth.plumbing import logcontext, tracing


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_exporters_from_the_standard_variables(env: dict[str, str], wanted: list[str]) -> None:
    assert tracing._exporters_wanted(env) == wanted


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="zipkin"):
        tracing._exporters_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_off_by_default_installs_nothing() -> None:
    assert tracing.setup("api", env={}) is False
    assert not tracing.enabled()
    assert tracing.carrier() is None
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    assert tracing.start_span("x") is None
    with tracing.span("x") as span:
        assert span is None


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup("api", env={}, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_a_carrier_continues_the_trace_and_logs_carry_its_id(
    traced: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    context = tracing.extract({"traceparent": f"00-{trace_id}-{parent}-01"})
    span = tracing.start_span("POST /v1/chat/completions", context, server=True)
    log = logging.getLogger("berth.test")
    log.addFilter(logcontext.ContextFilter("api"))
    with caplog.at_level(logging.INFO, "berth.test"):
        with tracing.current(span):
            carrier = tracing.carrier()
            log.info("inside")
        log.info("outside")
    assert span is not None
    span.end()
    assert carrier is not None and carrier["traceparent"].startswith(f"00-{trace_id}-")
    inside, outside = caplog.records[-2:]
    assert getattr(inside, "trace_id") == trace_id  # noqa: B009
    assert getattr(outside, "trace_id") is None  # noqa: B009
