"""The one exception hierarchy of berth and the OpenAI-shaped error body.

Every component raises a subclass of :class:`BerthError`; the API maps it to an
HTTP status and an ``{"error": {...}}`` body at the boundary, and workers send
the same body inside an error event so a client sees one shape whatever failed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


class ErrorDetail(BaseModel):
    """The inner object of an OpenAI error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI returns it."""

    error: ErrorDetail


class BerthError(Exception):
    """Root of every error berth raises on purpose."""

    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body for this error."""
        return ErrorBody(
            error=ErrorDetail(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        ).model_dump()


class InvalidRequest(BerthError):
    """The request breaks the contract; ``param`` names the offending field."""

    status_code = 400
    error_type = "invalid_request_error"


class Unsupported(InvalidRequest):
    """A known field berth (or the engine) cannot honour."""

    default_code = "unsupported_field"


class TooLarge(InvalidRequest):
    """A body or an uploaded file over its size limit."""

    status_code = 413
    default_code = "request_too_large"


class TooSlow(InvalidRequest):
    """A client sending its body too slowly (a slow upload holding a connection open)."""

    status_code = 408
    default_code = "upload_too_slow"


class Unauthorized(BerthError):
    """Missing or wrong API key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(BerthError):
    """The caller may not use the admin API."""

    status_code = 403
    error_type = "permission_error"
    default_code = "admin_only"


class NotFound(BerthError):
    """The model, adapter or object does not exist."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """No worker serves this model or adapter."""

    default_code = "model_not_found"


class MethodNotAllowed(InvalidRequest):
    """The route exists, but not for this HTTP method."""

    status_code = 405
    default_code = "method_not_allowed"


class QueueFull(BerthError):
    """The model's ingress queue is at its bound; retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class RateLimited(QueueFull):
    """The tenant is over one of its limits; ``headers`` carry OpenAI's x-ratelimit-*."""

    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int = 1,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message, retry_after=retry_after, param=param)
        self.headers = dict(headers or {})
        if code is not None:
            self.code = code


class Unavailable(BerthError):
    """The model exists but no worker can take work now."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "no_workers"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int = 5,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class StoreUnavailable(Unavailable):
    """Redis, where berth queues requests, cannot be reached right now."""

    default_code = "store_unavailable"


class EngineFailure(BerthError):
    """The engine or its worker failed while serving the request."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class WorkerLost(EngineFailure):
    """The worker running the request stopped heartbeating."""

    default_code = "worker_lost"


class EventsLost(EngineFailure):
    """Part of the answer was lost on its way from the worker and cannot be recovered."""

    default_code = "events_lost"


class Timeout(BerthError):
    """The request did not finish within its deadline."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


def error_from_body(body: dict[str, Any], status_code: int = 500) -> BerthError:
    """Rebuild an error from a body that crossed a process boundary."""
    detail = ErrorDetail.model_validate(body.get("error", body))
    for cls in _BY_TYPE_STATUS:
        if cls.error_type == detail.type and cls.status_code == status_code:
            return cls(detail.message, param=detail.param, code=detail.code)
    err = BerthError(detail.message, param=detail.param, code=detail.code)
    err.error_type = detail.type
    err.status_code = status_code
    return err


_BY_TYPE_STATUS: tuple[type[BerthError], ...] = (
    InvalidRequest,
    Unauthorized,
    NotFound,
    EngineFailure,
    Timeout,
    # a request that waited for a worker in vain (the scheduler's): 503 with Retry-After
    Unavailable,
)


# --- validation errors -----------------------------------------------------------------
#
# Validators inside the protocol models raise :func:`field_error`; the model cannot know
# where it sits in the request (``messages[3]``), so the message carries only the detail
# and :func:`invalid_request_from` prefixes the path pydantic reports.

FIELD_ERROR = "berth_field"
UNSUPPORTED_ERROR = "berth_unsupported"

_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def field_error(
    detail: str, *, subpath: str = "", unsupported: bool = False
) -> PydanticCustomError:
    """A validation error whose message reads ``"<param> <detail>"``.

    ``subpath`` (like ``".role"`` or ``"[1].type"``) is appended to the location
    pydantic reports, for validators that check inside the value they were given.
    ``unsupported`` turns the error into :class:`Unsupported` instead of
    :class:`InvalidRequest`.
    """
    kind = UNSUPPORTED_ERROR if unsupported else FIELD_ERROR
    return PydanticCustomError(kind, "{detail}", {"detail": detail, "subpath": subpath})


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def param_from_loc(loc: tuple[int | str, ...]) -> str | None:
    """``("messages", 2, "<user>", "content")`` → ``"messages[2].content"``.

    Items in angle brackets are the tags of berth's tagged unions, not fields; keys
    that are not identifiers (an unknown field ``""``) are quoted: ``stream_options[""]``.
    """
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif not _NAME.fullmatch(item):
            # an unknown key a client sent, like "" or "max tokens": quote it
            if not item.startswith("<"):
                out += f"[{json.dumps(item)}]"
        else:
            out += f".{item}" if out else item
    return out or None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    """The first error of a pydantic ``ValidationError`` as an :class:`InvalidRequest`."""
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    param = param_from_loc(err["loc"])
    if ctx.get("subpath"):
        param = (param or "") + ctx["subpath"]
    name = param or "request body"
    kind = err["type"]
    if kind in (FIELD_ERROR, UNSUPPORTED_ERROR):
        detail = ctx["detail"]
        message = f"{name}{'' if detail.startswith(':') else ' '}{detail}"
        if kind == UNSUPPORTED_ERROR:
            return Unsupported(message, param=param)
        return InvalidRequest(message, param=param)
    if kind == "missing":
        message = f"{name} is required"
    elif kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {name}"
    elif kind in _TYPE_NAMES:
        message = f"{name} must be {_TYPE_NAMES[kind]}, got {_short(err['input'])}"
    elif kind == "literal_error":
        message = f"{name} must be one of {ctx['expected']}, got {_short(err['input'])}"
    else:
        message = f"{name}: {err['msg']}"
    return InvalidRequest(message, param=param)
