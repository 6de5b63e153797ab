"""Batch input files: one chat-completion request per JSONL line, as OpenAI's Batch API takes
them. Checked line by line when a file is uploaded and again when a batch is created."""

from __future__ import annotations

import json

from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.errors import BerthError, InvalidRequest
from berth.protocol.limits import RequestLimits

# the one endpoint a batch line (and a batch) may name
BATCH_URL = "/v1/chat/completions"
_LINE_FIELDS = ("custom_id", "method", "url", "body")


def at_line(number: int, err: BerthError) -> InvalidRequest:
    """An error in one line of a batch file, naming the line."""
    return InvalidRequest(f"line {number}: {err.message}", param=f"line {number}", code=err.code)


def parse_batch_input(
    content: bytes, limits: RequestLimits
) -> list[tuple[int, str, ChatCompletionRequest]]:
    """(line number, custom_id, request) of every line of a batch input file; the first bad
    line raises InvalidRequest naming it. Blank lines are skipped (and still counted)."""
    out = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            custom_id, chat = _parse_line(raw, limits, seen)
        except InvalidRequest as err:
            raise at_line(number, err) from None
        out.append((number, custom_id, chat))
    if not out:
        raise InvalidRequest(
            "the file holds no requests; a batch file has one JSON request per line",
            param="file",
        )
    return out


def _parse_line(
    raw: bytes, limits: RequestLimits, seen: set[str]
) -> tuple[str, ChatCompletionRequest]:
    if len(raw) > limits.max_body_bytes:
        raise InvalidRequest(
            f"the line is {len(raw)} bytes; at most {limits.max_body_bytes} are allowed",
            code="request_too_large",
        )
    try:
        item = json.loads(raw)
    except ValueError as err:
        raise InvalidRequest(f"not valid JSON: {err}") from None
    if not isinstance(item, dict):
        raise InvalidRequest("must be a JSON object with custom_id, method, url and body")
    for name in item:
        if name not in _LINE_FIELDS:
            raise InvalidRequest(
                f"unknown field {name!r}; a line has custom_id, method, url and body"
            )
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidRequest(f"custom_id must be a non-empty string, got {custom_id!r}")
    if custom_id in seen:
        raise InvalidRequest(f"custom_id {custom_id!r} is used by an earlier line")
    seen.add(custom_id)
    if item.get("method") != "POST":
        raise InvalidRequest(f"method must be 'POST', got {item.get('method')!r}")
    if item.get("url") != BATCH_URL:
        raise InvalidRequest(f"url must be {BATCH_URL!r}, got {item.get('url')!r}")
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a chat-completion request object")
    chat = parse_chat_request(body, limits)
    if chat.stream:
        raise InvalidRequest("stream must be false: a batch collects results, it does not stream")
    return custom_id, chat
