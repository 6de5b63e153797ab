"""A client's JSON: deep nesting and lone surrogates are 400s, not crashes further on."""

from __future__ import annotations

import pytest

from berth.protocol import jsonbody
from berth.protocol.errors import InvalidRequest


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        jsonbody.loads(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("text", [rb'"\ud800"', rb'"a\udfff"', rb'"\udc00\ud800"'])
def test_a_lone_surrogate_is_refused(text: bytes) -> None:
    with pytest.raises(InvalidRequest, match="lone UTF-16 surrogate"):
        jsonbody.loads(b'{"content": %s}' % text)


def test_valid_text_passes_whatever_it_holds() -> None:
    # a surrogate pair (an emoji), NULs and right-to-left marks are valid Unicode
    assert jsonbody.loads(rb'"\ud83d\ude00"') == "\U0001f600"
    assert jsonbody.loads('"a\\u0000b\u202e"'.encode()) == "a\x00b\u202e"


def test_invalid_json_names_what_was_read() -> None:
    with pytest.raises(InvalidRequest, match="the line is not valid JSON"):
        jsonbody.loads(b"{oops", "the line")


def test_a_shallow_view_counts_without_building() -> None:
    raw = b'{"tools": [{"a": [1, 2]}, {}, 3], "user": "ab\\u00e9", "n": 2, "stop": "x"}'
    view = jsonbody.shallow(raw, ("tools", "user", "messages"))
    assert view is not None
    assert set(view) == {"tools", "user", "n", "stop"}
    assert len(view["tools"]) == 3
    assert view["user"] == "ab\u00e9"
    # fields not asked for are only named
    assert view["n"] is None and view["stop"] is None


@pytest.mark.parametrize(
    "raw", [b"[1]", b'{"a": ', b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"]
)
def test_no_shallow_view_of_what_is_not_a_readable_object(raw: bytes) -> None:
    assert jsonbody.shallow(raw, ("a",)) is None
