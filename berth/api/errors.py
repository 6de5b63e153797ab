"""The one place a berth error becomes an HTTP answer."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from berth.protocol.errors import BerthError, QueueFull, RateLimited, Unavailable


def error_response(err: BerthError) -> JSONResponse:
    """The OpenAI error body with the error's status (and Retry-After when retrying helps).
    Counted, as every answer, by the HTTP middleware (api/middleware.py)."""
    headers = {}
    if isinstance(err, QueueFull | Unavailable):
        headers["Retry-After"] = str(err.retry_after)
    if isinstance(err, RateLimited):
        headers.update(err.headers)
    return JSONResponse(err.body(), status_code=err.status_code, headers=headers)
