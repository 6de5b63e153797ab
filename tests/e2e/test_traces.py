"""One connected OpenTelemetry trace across the API, the scheduler and the Celery worker
(fake engine), for a streamed chat request and for a job.

Each process writes its finished spans to a file of its own (``BERTH_TRACES_DIR``, berth's
test exporter beside the OTLP one); the test reads them back and checks that one request's
spans share one trace id and that their parent links form one tree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
# the scheduler's and the worker's spans, the same for a chat request and a job
BACKEND_SPANS = {
    "queue wait",
    "group and place",
    "dispatch",
    "worker",
    "engine queue",
    "prefill and first token",
    "streaming",
}


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory, traces_dir: Path) -> RunningStack:
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "200"}),
        "scheduler",
        "api",
        env={"BERTH_TRACES_DIR": str(traces_dir), "OTEL_TRACES_EXPORTER": "none"},
    )


def _spans(traces_dir: Path) -> list[dict[str, Any]]:
    spans = []
    for path in traces_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans


def _trace(traces_dir: Path, trace_id: str, wanted: set[str]) -> list[dict[str, Any]]:
    """The spans of ``trace_id`` once every name in ``wanted`` was written (the worker's end
    after the terminal event the client saw)."""
    deadline = time.monotonic() + 15
    while True:
        spans = [s for s in _spans(traces_dir) if s["trace_id"] == trace_id]
        if wanted <= {s["name"] for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def _assert_one_tree(spans: list[dict[str, Any]], root_parent: str | None) -> dict[str, Any]:
    """Every span's parent is a span of the trace, except the root's (``root_parent``: the
    client's span, or None for a trace the API started). Returns the root."""
    ids = {s["span_id"] for s in spans}
    assert len(ids) == len(spans)
    roots = [s for s in spans if s["parent_id"] not in ids]
    assert len(roots) == 1, [(s["name"], s["parent_id"]) for s in roots]
    assert roots[0]["parent_id"] == root_parent
    for s in spans:
        assert s["end_ns"] >= s["start_ns"], s
    return roots[0]


def _parent_name(spans: list[dict[str, Any]], name: str) -> str:
    by_id = {s["span_id"]: s for s in spans}
    span = next(s for s in spans if s["name"] == name)
    return str(by_id[span["parent_id"]]["name"])


def test_a_streamed_chat_request_is_one_trace(stack: RunningStack, traces_dir: Path) -> None:
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{client_span}-01"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
    }
    with (
        httpx.Client(base_url=stack.url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"

    names = BACKEND_SPANS | {"POST /v1/chat/completions", "validate", "relay"}
    spans = _trace(traces_dir, trace_id, names)
    assert {s["name"] for s in spans} == names
    root = _assert_one_tree(spans, client_span)
    assert root["name"] == "POST /v1/chat/completions"
    assert {s["service"] for s in spans} == {"berth-api", "berth-scheduler", "berth-worker"}
    # the path: API request -> scheduler's spans -> dispatch -> worker -> engine spans
    assert _parent_name(spans, "queue wait") == "POST /v1/chat/completions"
    assert _parent_name(spans, "relay") == "POST /v1/chat/completions"
    assert _parent_name(spans, "worker") == "dispatch"
    for name in ("engine queue", "prefill and first token", "streaming"):
        assert _parent_name(spans, name) == "worker"
    # the relay lasts until the terminal event: it ends after the worker's first token
    relay = next(s for s in spans if s["name"] == "relay")
    first = next(s for s in spans if s["name"] == "prefill and first token")
    assert relay["end_ns"] >= first["end_ns"]


def test_a_job_is_one_trace(stack: RunningStack, traces_dir: Path) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        job = client.post("/v1/jobs", json=body).json()
        deadline = time.monotonic() + 20
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.05)

    # no traceparent was sent: the API started the trace; the worker's span names the job
    deadline = time.monotonic() + 15
    while True:
        worker = [
            s
            for s in _spans(traces_dir)
            if s["name"] == "worker" and s["attributes"].get("berth.request_id") == job["id"]
        ]
        if worker or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert worker, "the worker wrote no span for the job"
    names = BACKEND_SPANS | {"POST /v1/jobs", "validate"}
    spans = _trace(traces_dir, worker[0]["trace_id"], names)
    assert {s["name"] for s in spans} == names
    root = _assert_one_tree(spans, None)
    assert root["name"] == "POST /v1/jobs"
    assert {s["service"] for s in spans} == {"berth-api", "berth-scheduler", "berth-worker"}
