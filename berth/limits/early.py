"""The early refusal: a pure ASGI middleware that answers the 429 of a tenant this API
process already knows to be over its requests per minute, before the request is routed or
its body read. The API installs it outermost and hands it what is the API's: how an error
becomes a response, and how a refusal is counted in its metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.protocol.errors import RateLimited

if TYPE_CHECKING:
    from berth.limits.quotas import Quotas

# every route under this prefix is a tenant's (counted by requests per minute), but the
# admin API's (tests/limits/test_early.py holds the routes to it)
TENANT_PATHS = "/v1/"
ADMIN_PATHS = "/v1/admin/"
# rendered refusals kept by RefuseOverRate before it starts over (a remembered tenant's
# answer changes about once a second, when its reset countdown does)
_RENDERED_MAX = 256


class RefuseOverRate:
    """Answers the 429 of a tenant this process already knows to be over its requests per
    minute (``Quotas.remembered_refusal``, the rate memo) before FastAPI routes the request,
    resolves its dependencies or runs the other middlewares: past its rate a flooding
    tenant's requests cost a key lookup and this answer. The answer waits up to
    ``rate_refusal_hold_s`` (``Quotas.refusal_hold_s``), so a client sending as fast as it
    can gets one refusal per connection per hold, not one per parse. The answer is the
    route's own (the same RateLimited through ``render``, the API's ``error_response``),
    rendered once while it stays the same and replayed as bytes (``_render``); ``count``
    (the API's metrics) is told of each, with the request's scope. With no tenant
    remembered (the usual case) it costs one check per request.

    Every path under /v1/ but the admin API is a tenant route; a remembered tenant's
    request for a path no route serves is a 429 here too (a 404 or 405 otherwise)."""

    def __init__(
        self,
        app: ASGIApp,
        render: Callable[[RateLimited], Response],
        count: Callable[[Scope], None],
        stamp: Callable[[Scope, Message], Message] = lambda scope, start: start,
    ) -> None:
        self.app = app
        self._render_error = render
        self._count = count
        # what the API sets on every answer's start (its X-Request-Id), on these too
        self._stamp = stamp
        # what the answer depends on -> its status, raw headers and body
        self._rendered: dict[tuple[object, ...], tuple[int, list[tuple[bytes, bytes]], bytes]] = {}

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
                self._count(scope)
                status, headers, body = self._render(refused)
                start = {"type": "http.response.start", "status": status, "headers": headers}
                await send(self._stamp(scope, start))
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _render(self, refused: RateLimited) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``render(refused)``'s status, headers and body, rendered once for each distinct
        answer and replayed after: a flood of refusals costs the arithmetic of its counts
        (``Quotas.remembered_refusal``), not a JSON body and headers built each time. The
        key holds everything the answer is made of, so a replay is byte for byte the answer
        rendered now (Retry-After and the x-ratelimit-* headers included)."""
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
            response = self._render_error(refused)
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
        # Starlette puts the app in the scope; the API's lifespan builds its state, which
        # holds the process's quotas and its keys (read here by name, not imported: the
        # limits never import the API)
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
