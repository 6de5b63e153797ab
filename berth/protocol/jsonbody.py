"""Parsing a client's JSON: whatever the bytes, a value or InvalidRequest, never a crash.

``json.loads`` alone lets two things through to fail later as 500s: nesting deep enough to
exhaust the parser's recursion (RecursionError), and ``\\ud800``-style escapes that decode
to lone surrogates, which no UTF-8 encoder (pydantic's, Redis') accepts."""

from __future__ import annotations

import json
import re
from typing import Any

from berth.protocol.errors import InvalidRequest

# an escaped UTF-16 surrogate: paired ones decode to one character, lone ones cannot
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str, what: str = "the request body") -> Any:
    """The JSON value of ``raw``; InvalidRequest saying what is wrong with it."""
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise InvalidRequest(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise InvalidRequest(f"{what} is nested too deeply") from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _SURROGATE_ESCAPE.search(data):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"{what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff not part of a "
                "pair): text must be valid Unicode"
            ) from None
    return value
