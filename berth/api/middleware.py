"""Pure ASGI middleware of the API: request metrics, a trace span per request (when tracing
is on), and SSE answers that proxies must not buffer.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs every response body through
an extra task and queue (a cost per request and per streamed chunk) and changes how a
client's disconnect reaches a streaming route.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth import tracing
from berth.api import metrics

UNMATCHED = "unmatched"
# a client chooses the method: anything else becomes one label, never a new series
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope) -> str:
    """The matched route's template (``/v1/jobs/{job_id}``), never the raw path: ids must not
    become label values. The router stores the route in the scope when it matches one."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class RequestMetrics:
    """Counts every HTTP request by method, route template and status class, and times it to
    its response's start and end (berth_api_http_*)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        method = scope["method"] if scope["method"] in _METHODS else "other"
        status: int | None = None

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics.HTTP_RESPONSE_START.labels(method, route_label(scope)).observe(
                    time.perf_counter() - arrived
                )
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except (ClientDisconnect, asyncio.CancelledError):
            # the client left (499 before an answer, as the chat route answers it): not a
            # server error
            self._count(scope, method, arrived, status_class(status or 499))
            raise
        except BaseException:
            # the server answers 500 (or cuts a started stream): count it, then let it do so
            self._count(scope, method, arrived, "5xx")
            raise
        self._count(scope, method, arrived, status_class(status) if status else "5xx")

    @staticmethod
    def _count(scope: Scope, method: str, arrived: float, status: str) -> None:
        route = route_label(scope)
        metrics.HTTP_RESPONSE_END.labels(method, route).observe(time.perf_counter() - arrived)
        metrics.HTTP_REQUESTS.labels(method, route, status).inc()


class NoProxyBuffering:
    """Adds ``X-Accel-Buffering: no`` to every event stream (text/event-stream), so nginx and
    proxies that honour it pass each event on at once instead of holding a buffer's worth."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                names = {name.lower() for name, _ in headers}
                content_type = next(
                    (value for name, value in headers if name.lower() == b"content-type"), b""
                )
                if content_type.startswith(b"text/event-stream") and (
                    b"x-accel-buffering" not in names
                ):
                    message = {**message, "headers": [*headers, (b"x-accel-buffering", b"no")]}
            await send(message)

        await self.app(scope, receive, marked_send)


class TraceRequests:
    """A server span for every HTTP request, current while the route runs (and, for a
    stream, until its last byte): the child of the client's ``traceparent`` when it sent
    one, else a new trace. Added only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", [])
            if name in (b"traceparent", b"tracestate")
        }
        span = tracing.start_span(
            f"{scope['method']} {scope.get('path', '')}",
            tracing.extract(headers),
            attributes={"http.request.method": scope["method"]},
            server=True,
        )
        assert span is not None  # only added when tracing is on

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        try:
            with tracing.current(span):
                await self.app(scope, receive, traced_send)
        finally:
            # named by the route's template once the router matched one: ids stay out
            span.update_name(f"{scope['method']} {route_label(scope)}")
            span.end()
