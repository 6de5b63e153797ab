"""Parsing a client's JSON: whatever the bytes, a value or InvalidRequest, never a crash.

``json.loads`` alone lets two things through to fail later as 500s: nesting deep enough to
exhaust the parser's recursion (RecursionError), and ``\\ud800``-style escapes that decode
to lone surrogates, which no UTF-8 encoder (pydantic's, Redis') accepts."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

import msgspec

from berth.protocol.errors import InvalidRequest

# an escaped UTF-16 surrogate: paired ones decode to one character, lone ones cannot
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# a JSON object's top level with its values scanned, not built; an array's items the same
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


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


def shallow(raw: bytes, sized: Collection[str]) -> dict[str, Any] | None:
    """A JSON object's top level from one scan that builds none of its contents (msgspec
    skips a value at hundreds of MB/s; building it as Python objects is tens of times
    slower): each field of ``sized`` that holds an array becomes a list of placeholders of
    the same length, one that holds a string that string; any other value is None. None
    when ``raw`` is not a JSON object msgspec can read: :func:`loads` then says why."""
    try:
        top = _TOP_LEVEL.decode(raw)
        view: dict[str, Any] = dict.fromkeys(top)
        for name in sized:
            value = top.get(name)
            if value is None:
                continue
            first = bytes(memoryview(value)[:1])
            if first == b"[":
                view[name] = _ITEMS.decode(value)
            elif first == b'"':
                view[name] = msgspec.json.decode(value)
        return view
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
