"""Every route of the API is counted by method, route template and status class, unhandled
exceptions included; read from the app's own /metrics, with the app running against a real
Valkey."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from berth.api.app import create_app
from berth.api.settings import ApiSettings

KEY = "sk-metrics-test"
ADMIN = "admin-metrics-test"
# a path parameter's value in the requests below: it must never become a label value
RAW_ID = "raw-id-4f1c"


@pytest.fixture
def app(redis_url: str) -> FastAPI:
    return create_app(
        ApiSettings(redis_url=redis_url, api_keys=f"tenant-a:{KEY}", admin_keys=ADMIN)
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions off: the client sees the 500 the server answers
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = client.get("/metrics").text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _count(
    samples: dict[tuple[tuple[str, str], ...], float], method: str, route: str, status: str = ""
) -> float:
    return sum(
        value
        for labels, value in samples.items()
        if dict(labels)["method"] == method
        and dict(labels)["route"] == route
        and (not status or dict(labels)["status"] == status)
    )


def test_every_route_is_counted_by_its_template(app: FastAPI, client: TestClient) -> None:
    calls = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.methods
        for method in sorted(route.methods - {"HEAD"})
    ]
    assert len(calls) > 15, calls
    before = _samples(client, "berth_api_http_requests_total")
    for method, template in calls:
        path = re.sub(r"\{[^}]+\}", RAW_ID, template)
        key = ADMIN if template.startswith("/v1/admin") else KEY
        answer = client.request(
            method,
            path,
            headers={"Authorization": f"Bearer {key}"},
            json={} if method in {"POST", "PUT"} else None,
        )
        assert answer.status_code < 500 or template == "/ready", (method, path, answer.text)
    after = _samples(client, "berth_api_http_requests_total")
    for method, template in calls:
        # /metrics is scraped once more by the second _samples call: one more per scrape
        scrapes = 1 if template == "/metrics" else 0
        got = _count(after, method, template) - _count(before, method, template)
        assert got == 1 + scrapes, (method, template, got)
    assert not [labels for labels in after if RAW_ID in str(labels)]


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    before = _samples(client, "berth_api_http_requests_total")
    for path in ("/nope", f"/v1/{RAW_ID}", f"/v1/jobs/{RAW_ID}/nothing"):
        assert client.get(path).status_code == 404
    assert client.request("BREW", "/health").status_code == 405
    after = _samples(client, "berth_api_http_requests_total")
    assert _count(after, "GET", "unmatched", "4xx") - _count(before, "GET", "unmatched", "4xx") == 3
    # an unknown method is one label, not a new series per method a client makes up
    assert _count(after, "other", "/health", "4xx") - _count(before, "other", "/health", "4xx") == 1
    assert not [labels for labels in after if RAW_ID in str(labels) or "BREW" in str(labels)]


def test_an_unhandled_exception_counts_as_5xx_and_the_server_answers_500(
    app: FastAPI, client: TestClient
) -> None:
    async def crash() -> None:
        raise RuntimeError("a bug in a route")

    app.add_api_route("/test-only/crash/{thing}", crash)
    before = _samples(client, "berth_api_http_requests_total")
    answer = client.get(f"/test-only/crash/{RAW_ID}")
    assert answer.status_code == 500
    after = _samples(client, "berth_api_http_requests_total")
    route = "/test-only/crash/{thing}"
    assert _count(after, "GET", route, "5xx") - _count(before, "GET", route, "5xx") == 1


def test_streams_are_timed_to_their_end_and_marked_unbuffered(
    app: FastAPI, client: TestClient
) -> None:
    async def events() -> AsyncIterator[str]:
        for n in range(3):
            yield f"data: {n}\n\n"

    async def stream() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_api_route("/test-only/stream", stream)
    route = "/test-only/stream"
    before = _samples(client, "berth_api_http_response_end_seconds_count")
    answer = client.get(route)
    assert answer.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert answer.headers["x-accel-buffering"] == "no"
    assert answer.headers["content-type"].startswith("text/event-stream")
    after = _samples(client, "berth_api_http_response_end_seconds_count")
    assert _count(after, "GET", route) - _count(before, "GET", route) == 1
    starts = _samples(client, "berth_api_http_response_start_seconds_count")
    assert _count(starts, "GET", route) >= 1
    # other answers are left as they are
    assert "x-accel-buffering" not in client.get("/health").headers
