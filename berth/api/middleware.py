"""Pure ASGI middleware of the API around every request (``HttpMiddleware``): request
metrics, a trace span per request (when tracing is on), an ``X-Request-Id`` on every
answer, and SSE answers that proxies must not buffer. The early 429 of a tenant known to
be over its rate, outside this one, is the limits' (``berth/limits/early.py``).

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs every response body through
an extra task and queue (a cost per request and per streamed chunk) and changes how a
client's disconnect reaches a streaming route. One middleware, not one per concern: all
three act on the response's start only, but every wrapper of ``send`` is a step for every
chunk a stream sends; so there is one wrapper, and it is a plain function that hands the
body's messages to the server's ``send`` as they are.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api import metrics
from berth.plumbing import logcontext, tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from prometheus_client import Counter

UNMATCHED = "unmatched"
# the route label of a request the limits' RefuseOverRate answered: no route was matched
REFUSED_EARLY = "refused_early"
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


def _method(scope: Scope) -> str:
    return scope["method"] if scope["method"] in _METHODS else "other"


# method label -> its child of berth_api_http_requests_total for early refusals
_refused_early: dict[str, Counter] = {}


def count_refused_early(scope: Scope) -> None:
    """Count a 429 that ``RefuseOverRate`` (berth/limits/early.py) answered before this
    module's middleware saw the request: in ``berth_api_http_requests_total``, with the
    route ``refused_early``, not timed."""
    method = _method(scope)
    counter = _refused_early.get(method)
    if counter is None:
        counter = _refused_early[method] = metrics.HTTP_REQUESTS.labels(
            method, REFUSED_EARLY, "4xx"
        )
    counter.inc()


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


# a client's own X-Request-Id is honoured when it is this: printable, no spaces, bounded
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
_REQUEST_ID = b"x-request-id"


def client_request_id(scope: Scope) -> bytes | None:
    """The request's own ``X-Request-Id`` when it is well-formed, else None (ignored, and
    the answer carries one of berth's)."""
    for name, value in scope.get("headers", []):
        if name == _REQUEST_ID:
            return value if _CLIENT_ID.fullmatch(value) else None
    return None


def with_request_id(start: Message, client_id: bytes | None) -> Message:
    """``start`` with its ``X-Request-Id``: the client's own when it sent a well-formed one
    (a chat answer's id stays in its body), else the one the route set (a chat completion's
    id, the handle to resume or cancel it), else a new one."""
    headers = start.get("headers", [])
    own = next((value for name, value in headers if name.lower() == _REQUEST_ID), None)
    if client_id is None and own is not None:
        return start
    rid = client_id or f"req-{uuid.uuid4().hex}".encode()
    kept = [(n, v) for n, v in headers if n.lower() != _REQUEST_ID]
    return {**start, "headers": [*kept, (_REQUEST_ID, rid)]}


def stamp_request_id(scope: Scope, start: Message) -> Message:
    """``with_request_id`` for an answer given outside ``HttpMiddleware`` (the limits' early
    refusal)."""
    return with_request_id(start, client_request_id(scope))


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
    times it to its response's start and end (berth_api_http_*); sets its ``X-Request-Id``
    (``with_request_id``); marks event streams unbuffered (``unbuffered``); when tracing is
    on, a server span current while the route runs (and, for a stream, until its last
    byte)."""

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
        client_id = client_request_id(scope)
        if client_id is not None:
            # the client's id on every log line of its request, beside berth's own ids
            logcontext.bind(client_request_id=client_id.decode())

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
                message = unbuffered(with_request_id(message, client_id))
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
