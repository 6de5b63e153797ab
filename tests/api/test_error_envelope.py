"""Every error the API answers is OpenAI's error body, Starlette's own included: a route
that does not exist (404) and a method a route does not take (405). The app runs against
a real Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from berth.api.app import create_app
from berth.api.settings import ApiSettings

KEY = "sk-envelope-test"


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    app = create_app(ApiSettings(redis_url=redis_url, api_keys=f"tenant-a:{KEY}"))
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def test_an_unknown_route_is_a_404_in_the_openai_envelope(client: TestClient) -> None:
    answer = client.post("/v1/no-such-thing", json={})
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "message": "no route POST /v1/no-such-thing",
            "type": "invalid_request_error",
            "param": None,
            "code": "route_not_found",
        }
    }


def test_a_wrong_method_is_a_405_naming_the_allowed_ones(client: TestClient) -> None:
    answer = client.get("/v1/chat/completions")
    assert answer.status_code == 405
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "method_not_allowed"
    assert error["message"] == "GET is not allowed on /v1/chat/completions; allowed: POST"
    assert answer.headers["Allow"] == "POST"


def test_every_answer_carries_an_x_request_id(client: TestClient) -> None:
    # berth's own where the client sent none; a chat answer's is its completion id
    ids = {client.get(path).headers["X-Request-Id"] for path in ("/health", "/v1/nope")}
    assert len(ids) == 2 and all(rid.startswith("req-") for rid in ids)
    assert client.post("/v1/chat/completions", content=b"{").headers["X-Request-Id"]


def test_a_clients_well_formed_request_id_is_honoured(client: TestClient) -> None:
    mine = {"X-Request-Id": "trace-42:abc/DEF"}
    assert client.get("/health", headers=mine).headers["X-Request-Id"] == "trace-42:abc/DEF"
    assert client.get("/v1/nope", headers=mine).headers["X-Request-Id"] == "trace-42:abc/DEF"
    # one with spaces or too long is not echoed: berth's own instead
    for bad in ("has space", "x" * 129):
        answer = client.get("/health", headers={"X-Request-Id": bad})
        assert answer.headers["X-Request-Id"].startswith("req-")
