"""A tenant this API process knows to be over its requests per minute is refused before
routing (berth/limits/early.py RefuseOverRate): the same 429 as the route's, nothing
counted in Redis, and no other tenant touched. The app runs in process against a real
Valkey; its clock (berth.limits.quotas's) is held still, so the route's refusal and the early
one are computed for the same instant and can be compared byte for byte."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import redis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

import berth.limits.quotas
from berth.api import deps
from berth.api.app import create_app
from berth.api.middleware import REFUSED_EARLY
from berth.api.settings import ApiSettings
from berth.limits import ADMIN_PATHS, TENANT_PATHS
from berth.limits import model as quota
from berth.protocol import keys

KEYS = {"a": "key-a", "b": "key-b"}
ADMIN = "admin-early-refusal"
RATE = 3


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> float:
    held = time.time()
    monkeypatch.setattr(berth.limits.quotas, "time", SimpleNamespace(time=lambda: held))
    return held


def _settings(redis_url: str, hold_s: float) -> ApiSettings:
    return ApiSettings(
        redis_url=redis_url,
        api_keys=",".join(f"{t}:{k}" for t, k in KEYS.items()),
        admin_keys=ADMIN,
        tenant_limits=json.dumps({"a": {"requests_per_minute": RATE}}),
        rate_refusal_hold_s=hold_s,
    )


@pytest.fixture
def app(redis_url: str, now: float) -> FastAPI:
    # the held clock would hold each refusal for the whole memo (the last test holds one)
    return create_app(_settings(redis_url, hold_s=0))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def _but_id(answer: Any) -> dict[str, str]:
    """An answer's headers but its X-Request-Id, which is every answer's own."""
    assert answer.headers["x-request-id"]
    return {k: v for k, v in answer.headers.items() if k != "x-request-id"}


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _refused_early(method: str) -> float:
    labels = {"method": method, "route": REFUSED_EARLY, "status": "4xx"}
    return REGISTRY.get_sample_value("berth_api_http_requests_total", labels) or 0.0


def _quota_records(r: redis.Redis, tenant: str) -> dict[Any, Any]:
    return {key: r.get(key) for key in r.keys(f"{keys.PREFIX}:quota:{tenant}:*")}


def _over_rate(client: TestClient) -> httpx2.Response:
    """Tenant a's requests up to its rate, then the route's refusal (Redis's answer)."""
    for _ in range(RATE):
        assert client.get("/v1/models", headers=_auth("a")).status_code == 200
    before = _refused_early("GET")
    late = client.get("/v1/models", headers=_auth("a"))
    assert late.status_code == 429
    # this one went through the route: the middleware knew nothing yet
    assert _refused_early("GET") == before
    return late


def test_the_early_refusal_is_the_routes_and_is_not_counted(
    client: TestClient, redis_url: str, now: float
) -> None:
    late = _over_rate(client)
    r = redis.Redis.from_url(redis_url)
    records = _quota_records(r, "a")
    index, _ = quota.window(now)
    assert r.get(keys.quota_rate("a", "requests", index)) == str(RATE).encode()
    before = {m: _refused_early(m) for m in ("GET", "POST", "DELETE")}
    early = [
        client.get("/v1/models", headers=_auth("a")),
        # bodies are never read: a malformed one is refused the same
        client.post("/v1/chat/completions", content=b"{not json", headers=_auth("a")),
        client.post("/v1/files", content=b"x" * 10_000, headers=_auth("a")),
        client.delete("/v1/jobs/some-job", headers=_auth("a")),
    ]
    for answer in early:
        assert answer.status_code == 429
        assert answer.content == late.content
        assert _but_id(answer) == _but_id(late)
    assert late.json()["error"]["code"] == "rate_limit_exceeded"
    assert {"retry-after", "x-ratelimit-limit-requests", "x-ratelimit-reset-requests"} <= set(
        late.headers
    )
    # answered before routing, every one
    assert _refused_early("GET") - before["GET"] == 1
    assert _refused_early("POST") - before["POST"] == 2
    assert _refused_early("DELETE") - before["DELETE"] == 1
    # and nothing of the tenant's changed in Redis
    assert _quota_records(r, "a") == records
    r.close()


def test_other_tenants_and_other_routes_are_never_refused_early(
    client: TestClient, redis_url: str, now: float
) -> None:
    _over_rate(client)
    r = redis.Redis.from_url(redis_url)
    index, _ = quota.window(now)
    before = _refused_early("GET")
    for n in range(1, 6):
        assert client.get("/v1/models", headers=_auth("b")).status_code == 200
        # b's requests still count, each in Redis
        assert r.get(keys.quota_rate("b", "requests", index)) == str(n).encode()
    # a missing or unknown key is the route's 401, never a's 429
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    # routes that are not a tenant's: health, and the admin API (which wants an admin key)
    assert client.get("/health", headers=_auth("a")).status_code == 200
    assert client.get("/v1/admin/adapters", headers=_auth("a")).status_code == 401
    assert _refused_early("GET") == before
    # a is still refused, early
    assert client.get("/v1/models", headers=_auth("a")).status_code == 429
    assert _refused_early("GET") == before + 1
    r.close()


def _depends_on(dependant: object, call: object) -> bool:
    return getattr(dependant, "call", None) is call or any(
        _depends_on(d, call) for d in getattr(dependant, "dependencies", [])
    )


def test_the_middlewares_tenant_paths_are_the_tenant_routes(app: FastAPI) -> None:
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    for route in routes:
        tenants = route.path.startswith(TENANT_PATHS) and not route.path.startswith(ADMIN_PATHS)
        assert _depends_on(route.dependant, deps._tenant) == tenants, route.path
    assert sum(1 for route in routes if route.path.startswith(ADMIN_PATHS)) >= 1


def test_a_replayed_refusal_follows_the_clock(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    """The early answer is rendered once and replayed while it is the same answer; as the
    clock moves, its Retry-After and reset count down: never a stale copy."""
    # 20.5 s into this minute, so nothing here crosses into the next one
    clock = [quota.window(now)[0] * quota.WINDOW_S + 20.5]
    monkeypatch.setattr(berth.limits.quotas, "time", SimpleNamespace(time=lambda: clock[0]))
    late = _over_rate(client)
    replayed = [client.get("/v1/models", headers=_auth("a")) for _ in range(2)]
    for answer in replayed:
        assert answer.content == late.content and _but_id(answer) == _but_id(late)
    # within the memo (rate_memo_s, 1 s), across a whole second of the countdowns
    clock[0] += 0.9
    moved = client.get("/v1/models", headers=_auth("a"))
    assert moved.status_code == 429 and moved.content == late.content
    _, elapsed = quota.window(clock[0])
    retry = math.ceil(quota.wait_s(0, RATE, elapsed, 1, RATE))
    assert moved.headers["retry-after"] == str(retry) != late.headers["retry-after"]
    reset = quota.duration(quota.reset_s(0, RATE, elapsed))
    assert moved.headers["x-ratelimit-reset-requests"] == reset
    assert reset != late.headers["x-ratelimit-reset-requests"]


def test_a_remembered_refusal_is_held_within_the_memo(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    """Answered after ``rate_refusal_hold_s`` but never past the memo's end, and the same
    answer as the route's for the moment it is sent."""
    clock = [quota.window(now)[0] * quota.WINDOW_S + 20.5]
    monkeypatch.setattr(berth.limits.quotas, "time", SimpleNamespace(time=lambda: clock[0]))
    app = create_app(_settings(redis_url, hold_s=0.2))
    with TestClient(app) as client:
        late = _over_rate(client)
        quotas = app.state.berth.quotas
        assert quotas.refusal_hold_s("a") == pytest.approx(0.2)
        assert quotas.refusal_hold_s("b") == 0.0
        before = _refused_early("GET")
        held = client.get("/v1/models", headers=_auth("a"))
        assert held.content == late.content and _but_id(held) == _but_id(late)
        assert _refused_early("GET") == before + 1
        # 0.05 s before the memo's end (rate_memo_s, 1 s): held only that long
        clock[0] += 0.95
        assert quotas.refusal_hold_s("a") == pytest.approx(0.05)
        assert client.get("/v1/models", headers=_auth("a")).status_code == 429
        clock[0] += 0.1
        assert quotas.refusal_hold_s("a") == 0.0
