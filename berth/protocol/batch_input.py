"""Batch input files: one chat-completion request per JSONL line, as OpenAI's Batch API takes
them. Checked line by line while a file is uploaded (``LineSplitter`` and ``InputChecker``
never hold more than one line plus the chunk at hand), again when a batch is created, and
turned into queued requests a window at a time while the batch runs (``batch_request``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from berth.protocol import jsonbody
from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.errors import BerthError, InvalidRequest
from berth.protocol.limits import RequestLimits

# the one endpoint a batch line (and a batch) may name
BATCH_URL = "/v1/chat/completions"
_LINE_FIELDS = ("custom_id", "method", "url", "body")

# (model named by a line, its lora_path) -> (base model, adapter), as the API resolved them
Resolved = Mapping[tuple[str, str | None], tuple[str, str | None]]


def at_line(number: int, err: BerthError) -> InvalidRequest:
    """An error in one line of a batch file, naming the line."""
    return InvalidRequest(f"line {number}: {err.message}", param=f"line {number}", code=err.code)


def _line_too_large(number: int, size: int, limit: int) -> InvalidRequest:
    return at_line(
        number,
        InvalidRequest(
            f"the line is {size} bytes; at most {limit} are allowed", code="request_too_large"
        ),
    )


class LineSplitter:
    """Splits a byte stream into lines (without their ``\\n``). Holds at most one partial
    line, refused once it outgrows ``max_line_bytes``, so a file with no newline costs no
    more than a file of many lines."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.lines = 0  # complete lines returned so far
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes."""
        parts = data.split(b"\n")
        if len(parts) == 1:
            self._partial += data
            self._check(self._partial)
            return []
        self._partial += parts[0]
        out = [bytes(self._partial), *parts[1:-1]]
        self._partial = bytearray(parts[-1])
        for i, line in enumerate(out):
            self._check(line, self.lines + i + 1)
        self._check(self._partial, self.lines + len(out) + 1)
        self.lines += len(out)
        return out

    def end(self) -> bytes:
        """What follows the last newline (empty when the stream ended with one)."""
        last = bytes(self._partial)
        self._partial = bytearray()
        return last

    def _check(self, line: bytes | bytearray, number: int | None = None) -> None:
        if len(line) > self.max_line_bytes:
            raise _line_too_large(number or self.lines + 1, len(line), self.max_line_bytes)


class InputChecker:
    """Validates a batch file's lines in order, a slice at a time: each line a request,
    custom_ids unique (remembered as digests, 16 bytes each), at most ``max_lines`` lines."""

    def __init__(self, limits: RequestLimits, max_lines: int) -> None:
        self.limits = limits
        self.max_lines = max_lines
        self.lines = 0  # lines seen, blank ones included
        self.requests = 0
        self._seen: set[bytes] = set()

    def check(self, lines: Iterable[bytes]) -> list[tuple[int, ChatCompletionRequest]]:
        """(line number, request) of each non-blank line; the first bad one raises
        InvalidRequest naming it."""
        out = []
        for raw in lines:
            self.lines += 1
            if self.lines > self.max_lines:
                raise InvalidRequest(
                    f"the file has more than {self.max_lines} lines; split it into several batches",
                    param="file",
                    code="too_many_lines",
                )
            if not raw.strip():
                continue
            try:
                _, chat = parse_line(raw, self.limits, self._seen)
            except InvalidRequest as err:
                raise at_line(self.lines, err) from None
            self.requests += 1
            out.append((self.lines, chat))
        return out

    def finish(self) -> None:
        if not self.requests:
            raise InvalidRequest(
                "the file holds no requests; a batch file has one JSON request per line",
                param="file",
            )


def parse_line(
    raw: bytes, limits: RequestLimits, seen: set[bytes] | None = None
) -> tuple[str, ChatCompletionRequest]:
    """(custom_id, request) of one line; ``seen`` (digests of earlier custom_ids) catches
    a repeated custom_id."""
    if len(raw) > limits.max_body_bytes:
        raise InvalidRequest(
            f"the line is {len(raw)} bytes; at most {limits.max_body_bytes} are allowed",
            code="request_too_large",
        )
    item = jsonbody.loads(raw, "the line")
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
    if seen is not None:
        digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
        if digest in seen:
            raise InvalidRequest(f"custom_id {custom_id!r} is used by an earlier line")
        seen.add(digest)
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


def custom_id_of(raw: bytes) -> str | None:
    """A stored line's custom_id, without validating the rest (for lines never run)."""
    try:
        item = json.loads(raw)
    except ValueError:
        return None
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def batch_request(
    raw: bytes,
    limits: RequestLimits,
    resolved: Resolved,
    *,
    job_id: str,
    tenant: str,
    deadline: float,
) -> tuple[str, QueuedRequest]:
    """(custom_id, queued request) of a line checked when its batch was created, with the
    model resolutions the API made then, so whoever starts it needs no worker directory."""
    custom_id, chat = parse_line(raw, limits)
    model, adapter = resolved[(chat.model, chat.lora_path)]
    return custom_id, QueuedRequest(
        id=job_id,
        model=model,
        adapter=adapter,
        request=chat.model_dump(mode="json", exclude_none=True),
        deadline=deadline,
        lane="batch",
        job=True,
        tenant=tenant,
        affinity=chat.prompt_cache_key,
    )
