"""The ids a log line carries: the request, job, batch and worker it is about.

A route or a worker binds the ids it knows once, on entry; a logging filter copies them onto
every record logged in that context (an asyncio task, and the tasks it starts), so
`log.info("...%s", x)` calls stay as they are and JSON lines still carry the ids.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType

from berth.plumbing import tracing

IDS = ("request_id", "job_id", "batch_id", "worker_id", "scheduler_id", "client_request_id")
# every JSON line has the field: the current span's trace, null when tracing is off
TRACE_ID = "trace_id"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_ids: ContextVar[Mapping[str, str]] = ContextVar("berth_log_ids", default=_EMPTY)


def bind(**ids: str | None) -> Token[Mapping[str, str]]:
    """Add ``ids`` (those not None) to the current context's; returns the token that undoes
    it. In a task of its own (a route's request, a worker's request) there is nothing to undo:
    the binding ends with the task."""
    known = {name: value for name, value in ids.items() if value is not None}
    unknown = set(known) - set(IDS)
    if unknown:
        raise ValueError(f"unknown log ids {sorted(unknown)}; allowed: {', '.join(IDS)}")
    return _ids.set(MappingProxyType({**_ids.get(), **known}))


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """``bind`` for the length of a ``with`` block."""
    token = bind(**ids)
    try:
        yield
    finally:
        _ids.reset(token)


def current() -> Mapping[str, str]:
    return _ids.get()


class ContextFilter(logging.Filter):
    """Sets ``role``, the ids known in the current context (and the process's own, such as
    its worker id) and ``trace_id`` on every record; an id passed in ``extra=`` wins."""

    def __init__(self, role: str, process_ids: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.role = role
        self.process_ids = dict(process_ids or {})

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        for name, value in {**self.process_ids, **_ids.get()}.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if not hasattr(record, TRACE_ID):
            record.trace_id = tracing.current_trace_id()
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO 8601, UTC), level, role, logger, message, the ids
    known (request_id, job_id, batch_id, worker_id, scheduler_id, and a client's own
    X-Request-Id as client_request_id), trace_id, and exc_info
    when an exception is logged."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(role)s %(name)s %(message)s %(trace_id)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def text_formatter(role: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
