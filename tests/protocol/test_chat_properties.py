"""Property tests: valid requests always parse and normalise; each invalid mutation
is refused with ``param`` naming the field it broke."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.errors import InvalidRequest, Unsupported
from berth.protocol.messages import ROLES

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=20)
NON_EMPTY = st.text(min_size=1, max_size=10)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)


def floats(lo: float, hi: float, **kw: Any) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


def content() -> st.SearchStrategy[Any]:
    part = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
    return TEXT | st.lists(part, max_size=3)


def message(role: str) -> st.SearchStrategy[dict[str, Any]]:
    if role == "tool":
        return st.fixed_dictionaries(
            {"role": st.just(role), "content": content(), "tool_call_id": NON_EMPTY}
        )
    if role == "function":
        return st.fixed_dictionaries(
            {"role": st.just(role), "name": NAME, "content": st.none() | TEXT}
        )
    if role == "assistant":
        return st.fixed_dictionaries(
            {"role": st.just(role), "content": content()}, optional={"reasoning_content": TEXT}
        )
    return st.fixed_dictionaries(
        {"role": st.just(role), "content": content()}, optional={"name": NAME}
    )


MESSAGES = st.lists(st.sampled_from(ROLES).flatmap(message), min_size=1, max_size=5)

# Fields whose valid values do not depend on one another.
INDEPENDENT: dict[str, st.SearchStrategy[Any]] = {
    "temperature": floats(0, 2),
    "top_p": floats(0, 1, exclude_min=True),
    "top_k": st.just(-1) | st.integers(1, 10_000),
    "min_p": floats(0, 1),
    "presence_penalty": floats(-2, 2),
    "frequency_penalty": floats(-2, 2),
    "repetition_penalty": floats(0.01, 10),
    "n": st.integers(1, 16),
    "seed": INT64,
    "sampling_seed": INT64,
    "stop": st.none() | NON_EMPTY | st.lists(NON_EMPTY, max_size=4),
    "stop_token_ids": st.lists(st.integers(0, 200_000), max_size=8),
    "logit_bias": st.dictionaries(
        st.integers(0, 200_000).map(str), st.integers(-100, 100) | floats(-100, 100), max_size=5
    ),
    "service_tier": st.sampled_from(["auto", "default", "flex", "scale", "priority"]),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
    "metadata": st.dictionaries(NAME, TEXT, max_size=4),
    "user": TEXT,
    "store": st.booleans(),
    "prompt_cache_key": TEXT,
    "safety_identifier": TEXT,
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "no_stop_trim": st.booleans(),
    "separate_reasoning": st.booleans(),
    "stream_reasoning": st.booleans(),
    "parallel_tool_calls": st.booleans(),
    "chat_template_kwargs": st.fixed_dictionaries({"enable_thinking": st.booleans()}),
    "lora_path": NON_EMPTY,
    "modalities": st.just(["text"]),
}


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"model": draw(NON_EMPTY), "messages": draw(MESSAGES)}
    data.update(draw(st.fixed_dictionaries({}, optional=INDEPENDENT)))
    # token limits: either spelling, or both when equal; min_tokens below the limit
    limit = draw(st.none() | st.integers(1, 4096))
    if limit is not None:
        for key in draw(
            st.sampled_from(
                [["max_tokens"], ["max_completion_tokens"], ["max_tokens", "max_completion_tokens"]]
            )
        ):
            data[key] = limit
        if draw(st.booleans()):
            data["min_tokens"] = draw(st.integers(0, limit))
    if draw(st.booleans()):
        data["logprobs"] = True
        if draw(st.booleans()):
            data["top_logprobs"] = draw(st.integers(0, 20))
    if draw(st.booleans()):
        data["stream"] = True
        if draw(st.booleans()):
            data["stream_options"] = {"include_usage": draw(st.booleans())}
    # at most one output constraint
    constraint = draw(
        st.sampled_from(["none", "text", "json_object", "json_schema", "regex", "ebnf"])
    )
    if constraint in ("text", "json_object"):
        data["response_format"] = {"type": constraint}
    elif constraint == "json_schema":
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        data["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": draw(NAME), "schema": schema},
        }
    elif constraint != "none":
        data[constraint] = draw(NON_EMPTY)
    # tools (or legacy functions) with a choice that fits them
    names = draw(st.lists(NAME, unique=True, max_size=3))
    functions = [{"name": n, "parameters": {"type": "object"}} for n in names]
    # a required or named tool constrains the output, so only without another constraint
    free = constraint in ("none", "text")
    legacy = draw(st.booleans())
    if names and legacy:
        data["functions"] = functions
        calls: list[Any] = ["none", "auto"] + ([{"name": names[0]}] if free else [])
        data["function_call"] = draw(st.sampled_from(calls))
    elif names:
        data["tools"] = [{"type": "function", "function": f} for f in functions]
        choices: list[Any] = ["none", "auto"]
        if free:
            choices += ["required", {"type": "function", "function": {"name": names[-1]}}]
        data["tool_choice"] = draw(st.sampled_from(choices))
    if data["messages"][-1]["role"] == "assistant" and draw(st.booleans()):
        data["continue_final_message"] = True
    return data


@settings(max_examples=150, deadline=None)
@given(valid_bodies())
def test_valid_requests_parse_and_normalise(data: dict[str, Any]) -> None:
    req = parse_chat_request(data)
    assert req.max_tokens is None and req.functions is None and req.function_call is None
    assert req.stop is None or (isinstance(req.stop, list) and all(req.stop))
    assert req.max_tokens_requested == data.get("max_completion_tokens", data.get("max_tokens"))
    if "functions" in data:
        assert req.tools is not None and len(req.tools) == len(data["functions"])
        assert req.tool_choice is not None
    assert len(req.message_dicts()) == len(data["messages"])
    for m in req.message_dicts():
        assert None not in m.values()
        assert "content" not in m or isinstance(m["content"], str) or m["content"] is None


@settings(max_examples=100, deadline=None)
@given(valid_bodies())
def test_parsed_requests_survive_a_json_round_trip(data: dict[str, Any]) -> None:
    """The queued form (JSON in Redis) parses back to the same request."""
    req = parse_chat_request(data)
    again = parse_chat_request(json.loads(req.model_dump_json(exclude_none=True)))
    assert again == req


# (field, strategy of values that break it, the expected error class)
MUTATIONS: list[tuple[str, st.SearchStrategy[Any], type[InvalidRequest]]] = [
    (
        "temperature",
        floats(2, 1e6, exclude_min=True) | floats(-1e6, 0, exclude_max=True),
        InvalidRequest,
    ),
    ("temperature", TEXT | st.booleans(), InvalidRequest),
    ("top_p", floats(-1e6, 0) | floats(1, 1e6, exclude_min=True), InvalidRequest),
    ("top_k", st.integers(-(10**9), -2) | st.just(0), InvalidRequest),
    ("min_p", floats(1, 1e6, exclude_min=True) | floats(-1e6, 0, exclude_max=True), InvalidRequest),
    ("presence_penalty", floats(2, 1e6, exclude_min=True), InvalidRequest),
    ("frequency_penalty", floats(-1e6, -2, exclude_max=True), InvalidRequest),
    ("repetition_penalty", floats(-1e6, 0), InvalidRequest),
    ("n", st.integers(17, 10**6) | st.integers(-(10**6), 0), InvalidRequest),
    ("max_completion_tokens", st.integers(-(10**6), 0), InvalidRequest),
    ("seed", floats(-1e6, 1e6).filter(lambda f: f != int(f)) | TEXT, InvalidRequest),
    ("stop", st.lists(NON_EMPTY, min_size=5, max_size=8), InvalidRequest),
    ("stop_token_ids", st.lists(st.integers(max_value=-1), min_size=1, max_size=3), InvalidRequest),
    (
        "logit_bias",
        st.dictionaries(
            st.integers(0, 99).map(str), floats(100, 1e6, exclude_min=True), min_size=1
        ),
        InvalidRequest,
    ),
    (
        "logit_bias",
        st.dictionaries(
            st.text(min_size=1).filter(lambda k: not k.isdigit()), st.just(1), min_size=1
        ),
        InvalidRequest,
    ),
    ("messages", st.just([]), InvalidRequest),
    (
        "messages",
        st.text().filter(lambda r: r not in ROLES).map(lambda r: [{"role": r, "content": "x"}]),
        InvalidRequest,
    ),
    (
        "response_format",
        st.text()
        .filter(lambda t: t not in ("text", "json_object", "json_schema"))
        .map(lambda t: {"type": t}),
        InvalidRequest,
    ),
    (
        "service_tier",
        TEXT.filter(lambda t: t not in ("auto", "default", "flex", "scale", "priority")),
        InvalidRequest,
    ),
    ("regex", st.text(min_size=4097, max_size=4200), InvalidRequest),
    ("modalities", st.lists(st.just("audio"), min_size=1, max_size=2), Unsupported),
    ("audio", st.dictionaries(NAME, TEXT), Unsupported),
    ("prediction", st.dictionaries(NAME, TEXT), Unsupported),
    ("session_params", st.dictionaries(NAME, TEXT), Unsupported),
    ("verbosity", st.sampled_from(["low", "medium", "high"]), Unsupported),
]


@settings(max_examples=200, deadline=None)
@given(st.data(), valid_bodies())
def test_each_invalid_mutation_names_its_field(data: st.DataObject, body: dict[str, Any]) -> None:
    field, values, error = data.draw(st.sampled_from(MUTATIONS))
    body[field] = data.draw(values)
    if field == "messages":
        body.pop("continue_final_message", None)
    try:
        parse_chat_request(body)
    except InvalidRequest as err:
        assert isinstance(err, error)
        assert err.param is not None
        assert err.param == field or err.param.startswith((f"{field}[", f"{field}."))
        assert err.message.startswith(err.param) or field in err.message
    else:
        raise AssertionError(f"{field}={body[field]!r} was accepted")


@settings(max_examples=50, deadline=None)
@given(
    valid_bodies(),
    st.text(min_size=1, max_size=20).filter(lambda k: k not in ChatCompletionRequest.model_fields),
)
def test_unknown_fields_are_refused_by_name(body: dict[str, Any], key: str) -> None:
    body[key] = 1
    try:
        parse_chat_request(body)
    except InvalidRequest as err:
        assert err.param == key
        assert err.message == f"Unrecognized request argument supplied: {key}"
    else:
        raise AssertionError(f"{key!r} was accepted")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | floats(-1e9, 1e9) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
# a field, then indexes, attribute names, or quoted keys: messages[0].content, stop_options[""]
PARAM = re.compile(r'^[a-z_]+(\[\d+\]|\.[A-Za-z_][A-Za-z_0-9]*|\["(?:[^"\\]|\\.)*"\])*$')


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(ChatCompletionRequest.model_fields)), JSON_VALUES)
def test_any_value_in_any_field_parses_or_names_that_field(field: str, value: Any) -> None:
    """Whatever JSON a field gets, the answer is a request or a 400 naming that field."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], field: value}
    try:
        parse_chat_request(body)
    except InvalidRequest as err:
        assert err.param is not None
        assert PARAM.match(err.param), err.param
        assert err.param == field or err.param.startswith((f"{field}[", f"{field}."))
