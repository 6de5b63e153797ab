"""CPU per request of a tenant over its requests per minute, refused by the route (the rate
memo in the ``Tenant`` dependency, inside FastAPI) or before routing (the ``RefuseOverRate``
middleware), and of another tenant's admitted requests meanwhile.

    python -m benchmarks.refusal_cost            # 3 rounds of 3,000 requests per case
    python -m benchmarks.refusal_cost --n 1000 --rounds 2

The API app (``create_app``, its lifespan run, an embedded Valkey behind it) is called in
this process as an ASGI app, one request at a time, with a hand-built scope: no server and
no client, so the figure is the app's own CPU per request (``time.process_time``, not wall
time, since the machine is shared; the HTTP parsing a server adds is the same either way).
The ``route`` variant is the same app with the middleware taken out. Tenant ``a`` (1
request a minute) is pushed over its rate first, so Redis refuses it once and this process
remembers it (``BERTH_RATE_MEMO_S`` 60 s); tenant ``b`` has no rate limit, so its
``GET /v1/models`` is the API's cheapest admitted request, and with ``a`` remembered the
middleware looks its key up too. Prints the best round of each case, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

from benchmarks.sim import embedded_valkey
from berth.api.app import create_app
from berth.api.settings import ApiSettings
from berth.limits import RefuseOverRate

KEYS = {"a": "key-a", "b": "key-b"}
# no worker serves it: were the request admitted (the memo lapses at a minute's turn), it
# would be a quick 404, not a wait in the queue
CHAT = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
# name -> (tenant, method, path, body)
CASES: dict[str, tuple[str, str, str, bytes]] = {
    "a GET /v1/models (429)": ("a", "GET", "/v1/models", b""),
    "a POST /v1/chat/completions (429)": ("a", "POST", "/v1/chat/completions", CHAT.encode()),
    "b GET /v1/models (200)": ("b", "GET", "/v1/models", b""),
}


def scope(tenant: str, method: str, path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {KEYS[tenant]}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: FastAPI, request: dict[str, Any], body: bytes) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: never a disconnect
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    # a task per request, as a server runs them (the app's context stays the request's)
    await asyncio.create_task(app(request, receive, send))
    return status


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan, driven through ASGI's lifespan messages as a server drives it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


async def measure(app: FastAPI, n: int, rounds: int) -> dict[str, tuple[float, dict[int, int]]]:
    """Per case: the best round's CPU µs per request, and the statuses of all rounds."""
    async with running(app):
        out = {}
        for name, (tenant, method, path, body) in CASES.items():
            request = scope(tenant, method, path, body)
            best, statuses = float("inf"), dict[int, int]()
            for _ in range(rounds):
                # a over its rate, so Redis refuses it and this process remembers it (again,
                # if the memo lapsed at a minute's turn)
                while await call(app, scope("a", "GET", "/v1/models", b""), b"") != 429:
                    pass
                started = time.process_time()
                for _ in range(n):
                    status = await call(app, dict(request), body)
                    statuses[status] = statuses.get(status, 0) + 1
                best = min(best, (time.process_time() - started) / n * 1e6)
            out[name] = (best, statuses)
        return out


def build(redis_url: str, early: bool) -> FastAPI:
    app = create_app(
        ApiSettings(
            redis_url=redis_url,
            api_keys=",".join(f"{t}:{k}" for t, k in KEYS.items()),
            tenant_limits=json.dumps(
                {"a": {"requests_per_minute": 1}, "b": {"requests_per_minute": 0}}
            ),
            rate_memo_s=60,
            # the CPU of an answer, not the pacing of a flood
            rate_refusal_hold_s=0,
        )
    )
    if not early:
        # the middleware stack is built at the first request: take it out before
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RefuseOverRate]
    return app


async def main(args: argparse.Namespace) -> None:
    with embedded_valkey() as redis_url:
        results = {
            variant: await measure(build(redis_url, early), args.n, args.rounds)
            for variant, early in (("route", False), ("early", True))
        }
    print(f"CPU µs per request, best of {args.rounds} rounds of {args.n}")
    print(f"{'case':<36}{'route':>9}{'early':>9}{'ratio':>8}  statuses (route / early)")
    for name in CASES:
        (route, r_statuses), (early, e_statuses) = results["route"][name], results["early"][name]
        print(
            f"{name:<36}{route:>9.1f}{early:>9.1f}{early / route:>8.2f}  "
            f"{r_statuses} / {e_statuses}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="requests per round and case")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
