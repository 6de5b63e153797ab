"""Pure ASGI middleware of the API: the early 429 of a tenant known to be over its rate
(``RefuseOverRate``), and one around every request (``HttpMiddleware``): request
metrics, a trace span per request (when tracing is on), and SSE answers that proxies
must not buffer.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs every response body through
an extra task and queue (a cost per request and per streamed chunk) and changes how a
client's disconnect reaches a streaming route. One middleware, not one per concern: all
three act on the response's start only, but every wrapper of ``send`` is a step for every
chunk a stream sends; so there is one wrapper, and it is a plain function that hands the
body's messages to the server's ``send`` as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api import metrics
from berth.api.errors import error_response
from berth.plumbing import tracing
from berth.protocol.errors import RateLimited

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from prometheus_client import Counter

    from berth.api.quotas import Quotas

UNMATCHED = "unmatched"
# the route label of a request RefuseOverRate answered: no route was matched for it
REFUSED_EARLY = "refused_early"
# every route under this prefix is a tenant's (counted by requests per minute), but the
# admin API's (tests/api/test_early_refusal.py holds the routes to it)
TENANT_PATHS = "/v1/"
ADMIN_PATHS = "/v1/admin/"
# a client chooses the method: anything else becomes one label, never a new series
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# rendered refusals kept by RefuseOverRate before it starts over (a remembered tenant's
# answer changes about once a second, when its reset countdown does)
_RENDERED_MAX = 256


def route_label(scope: Scope) -> str:
    """The matched route's template (``/v1/jobs/{job_id}``), never the raw path: ids must not
    become label values. The router stores the route in the scope when it matches one."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def _method(scope: Scope) -> str:
    return scope["method"] if scope["method"] in _METHODS else "other"


class RefuseOverRate:
    """Answers the 429 of a tenant this process already knows to be over its requests per
    minute (``Quotas.remembered_refusal``, the rate memo) before FastAPI routes the request,
    resolves its dependencies or runs the other middlewares: past its rate a flooding
    tenant's requests cost a key lookup and this answer. The answer waits up to
    ``rate_refusal_hold_s`` (``Quotas.refusal_hold_s``), so a client sending as fast as it
    can gets one refusal per connection per hold, not one per parse. The answer is the route's own
    (the same RateLimited through ``error_response``), rendered once while it stays the
    same and replayed as bytes (``_render``); counted in
    ``berth_api_http_requests_total`` with the route ``refused_early``, not timed. With no
    tenant remembered (the usual case) it costs one check per request.

    Every path under /v1/ but the admin API is a tenant route; a remembered tenant's
    request for a path no route serves is a 429 here too (a 404 or 405 otherwise)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # what the answer depends on -> its status, raw headers and body
        self._rendered: dict[tuple[object, ...], tuple[int, list[tuple[bytes, bytes]], bytes]] = {}
        # method label -> its child of berth_api_http_requests_total
        self._counted: dict[str, Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            over = self._over_rate(scope)
            refused = over[0].remembered_refusal(over[1]) if over is not None else None
            if over is not None and refused is not None:
                quotas, tenant = over
                hold_s = quotas.refusal_hold_s(tenant)
                if hold_s > 0:
                    # answered at the pace of the tenant's connections, not of its CPU; still
                    # within the memo, so the refusal stays what Redis would answer
                    await asyncio.sleep(hold_s)
                    refused = quotas.remembered_refusal(tenant) or refused
                self._count(_method(scope))
                status, headers, body = self._render(refused)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _count(self, method: str) -> None:
        counter = self._counted.get(method)
        if counter is None:
            counter = self._counted[method] = metrics.HTTP_REQUESTS.labels(
                method, REFUSED_EARLY, "4xx"
            )
        counter.inc()

    def _render(self, refused: RateLimited) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``error_response(refused)``'s status, headers and body, rendered once for each
        distinct answer and replayed after: a flood of refusals costs the arithmetic of its
        counts (``Quotas.remembered_refusal``), not a JSON body and headers built each time.
        The key holds everything the answer is made of, so a replay is byte for byte the
        answer rendered now (Retry-After and the x-ratelimit-* headers included)."""
        key = (
            type(refused),
            refused.message,
            refused.param,
            refused.code,
            refused.retry_after,
            tuple(refused.headers.items()),
        )
        rendered = self._rendered.get(key)
        if rendered is None:
            if len(self._rendered) >= _RENDERED_MAX:
                self._rendered.clear()
            response = error_response(refused)
            rendered = self._rendered[key] = (
                response.status_code,
                response.raw_headers,
                bytes(response.body),
            )
        return rendered

    @staticmethod
    def _over_rate(scope: Scope) -> tuple[Quotas, str] | None:
        """The process's quotas and the request's tenant, when the process remembers some
        tenant over its rate and the request is a tenant route's with a known key."""
        path: str = scope["path"]
        if not path.startswith(TENANT_PATHS) or path.startswith(ADMIN_PATHS):
            return None
        # Starlette puts the app in the scope; its state is built by the lifespan
        state = getattr(scope["app"].state, "berth", None)
        if state is None or not state.quotas.refusing:
            return None
        authorization = next(
            (value for name, value in scope["headers"] if name == b"authorization"), None
        )
        tenant = state.keys.tenant_or_none(
            authorization.decode("latin-1") if authorization is not None else None
        )
        # a missing or unknown key goes on to the route, which answers its 401
        return None if tenant is None else (state.quotas, tenant)


def unbuffered(start: Message) -> Message:
    """``start`` (an ``http.response.start``) with ``X-Accel-Buffering: no`` added when it
    starts an event stream (text/event-stream), so nginx and proxies that honour it pass
    each event on at once instead of holding a buffer's worth."""
    headers = start.get("headers", [])
    names = {name.lower() for name, _ in headers}
    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    if content_type.startswith(b"text/event-stream") and b"x-accel-buffering" not in names:
        return {**start, "headers": [*headers, (b"x-accel-buffering", b"no")]}
    return start


def _server_span(scope: Scope) -> Span | None:
    """A server span for the request: the child of the client's ``traceparent`` when it
    sent one, else a new trace; None when tracing is off."""
    if not tracing.enabled():
        return None
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name in (b"traceparent", b"tracestate")
    }
    return tracing.start_span(
        f"{scope['method']} {scope.get('path', '')}",
        tracing.extract(headers),
        attributes={"http.request.method": scope["method"]},
        server=True,
    )


class HttpMiddleware:
    """Around every HTTP request: counts it by method, route template and status class and
    times it to its response's start and end (berth_api_http_*); marks event streams
    unbuffered (``unbuffered``); when tracing is on, a server span current while the route
    runs (and, for a stream, until its last byte)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        method = _method(scope)
        span = _server_span(scope)
        status: int | None = None

        def observed_send(message: Message) -> Awaitable[None]:
            # not a coroutine of its own: a body message costs this call, not another await
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics.HTTP_RESPONSE_START.labels(method, route_label(scope)).observe(
                    time.perf_counter() - arrived
                )
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                message = unbuffered(message)
            return send(message)

        try:
            with tracing.current(span):
                await self.app(scope, receive, observed_send)
        except (ClientDisconnect, asyncio.CancelledError):
            # the client left (499 before an answer, as the chat route answers it): not a
            # server error
            self._count(scope, method, arrived, status_class(status or 499))
            raise
        except BaseException:
            # the server answers 500 (or cuts a started stream): count it, then let it do so
            self._count(scope, method, arrived, "5xx")
            raise
        else:
            self._count(scope, method, arrived, status_class(status) if status else "5xx")
        finally:
            if span is not None:
                # named by the route's template once the router matched one: ids stay out
                span.update_name(f"{scope['method']} {route_label(scope)}")
                span.end()

    @staticmethod
    def _count(scope: Scope, method: str, arrived: float, status: str) -> None:
        route = route_label(scope)
        metrics.HTTP_RESPONSE_END.labels(method, route).observe(time.perf_counter() - arrived)
        metrics.HTTP_REQUESTS.labels(method, route, status).inc()
