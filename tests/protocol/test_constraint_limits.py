"""Each bound on output constraints: refused at the API with a 400 naming the field and the
limit, and adjustable through ``RequestLimits``."""

from __future__ import annotations

from typing import Any

import pytest

from berth.protocol.chat import parse_chat_request
from berth.protocol.constraints import repetition_violation
from berth.protocol.errors import InvalidRequest
from berth.protocol.limits import ADMITTED, DEFAULT_LIMITS, RequestLimits

SCHEMA_PARAM = "response_format.json_schema.schema"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def with_schema(schema: Any) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    return body(response_format=fmt)


def refused(data: dict[str, Any], limits: RequestLimits | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        parse_chat_request(data, limits)
    return err.value


def test_issue_schema_is_refused_naming_the_field_and_limit() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {"type": "string", "pattern": "[a-z]{1,50000}"},
                "minItems": 1000000,
            }
        },
        "required": ["a"],
    }
    err = refused(with_schema(schema))
    assert err.status_code == 400 and err.param == SCHEMA_PARAM
    assert err.message == (
        f"{SCHEMA_PARAM}: minItems must be at most 10000, got 1000000 (at properties.a)"
    )


@pytest.mark.parametrize(
    "keyword", ["minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxContains"]
)
def test_repetition_keywords(keyword: str) -> None:
    err = refused(with_schema({"type": "object", keyword: 10_001}))
    assert f"{keyword} must be at most 10000, got 10001" in err.message
    parse_chat_request(with_schema({"type": "object", keyword: 10_000}))


def test_schema_bytes() -> None:
    limits = RequestLimits(max_json_schema_bytes=100)
    err = refused(with_schema({"description": "x" * 200}), limits)
    assert err.param == SCHEMA_PARAM and "must be at most 100 bytes as JSON" in err.message


def test_property_count_sums_over_subschemas() -> None:
    limits = RequestLimits(max_json_schema_properties=3)
    schema: dict[str, Any] = {
        "properties": {
            "a": {"properties": {"b": {}, "c": {}}},
            "d": {},
        }
    }
    err = refused(with_schema(schema), limits)
    assert "properties must be at most 3 in all, got 4" in err.message


def test_enum_members_sum_over_subschemas() -> None:
    limits = RequestLimits(max_json_schema_enum=4)
    schema = {"anyOf": [{"enum": [1, 2, 3]}, {"enum": ["a", "b"]}]}
    assert (
        "enum members must be at most 4 in all, got 5"
        in refused(with_schema(schema), limits).message
    )


def test_total_pattern_length() -> None:
    limits = RequestLimits(max_json_schema_pattern_chars=10)
    schema = {
        "properties": {"a": {"pattern": "abcdef"}},
        "patternProperties": {"^x+$": {}},
        "items": {"pattern": "ab"},
    }
    assert (
        "patterns must be at most 10 characters in all"
        in refused(with_schema(schema), limits).message
    )


def test_pattern_repetition() -> None:
    err = refused(with_schema({"type": "string", "pattern": "^[a-z]{2,1001}$"}))
    assert "repetition counts ({m,n}) must be at most 1000, got 1001" in err.message


def test_data_keywords_are_not_schemas() -> None:
    # a default value that happens to look like a schema keyword is data
    parse_chat_request(with_schema({"type": "object", "default": {"minItems": 10**9}}))


def test_tool_parameters_are_bounded_too() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "array", "maxItems": 10**7}},
    }
    err = refused(body(tools=[tool]))
    assert err.param == "tools[0].function.parameters"
    assert "maxItems must be at most 10000" in err.message


def test_regex_and_ebnf_repetition() -> None:
    err = refused(body(regex="[0-9]{1,5000}"))
    assert err.param == "regex"
    assert err.message.startswith("regex: repetition counts ({m,n}) must be at most 1000")
    err = refused(body(ebnf="root ::= [a-z]{1,5000}"))
    assert err.param == "ebnf"
    # braces inside EBNF string literals, character classes and escapes are text
    parse_chat_request(body(ebnf='root ::= "{1,5000}" [{]'))
    parse_chat_request(body(regex=r"\{1,5000\}[{]x{3}"))


def test_huge_counts_are_reported_without_parsing_them() -> None:
    message = repetition_violation("a{1," + "9" * 5000 + "}", 1000)
    assert "more than 999999999999" in message


def test_limits_are_adjustable_and_admitted_lifts_them() -> None:
    strict = RequestLimits(max_json_schema_repetition=5, max_regex_repetition=2)
    assert "at most 5" in refused(with_schema({"maxItems": 6}), strict).message
    assert "at most 2" in refused(body(regex="a{3}"), strict).message
    parse_chat_request(with_schema({"maxItems": 10**9, "pattern": "a{1,99999}"}), ADMITTED)
    assert DEFAULT_LIMITS.max_json_schema_repetition == 10_000
