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
