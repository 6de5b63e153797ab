"""Token events: what ``event_json`` writes, ``decode_event`` reads back field by field."""

from __future__ import annotations

import msgspec
import pytest

from berth.protocol.envelopes import MalformedEvent, TokenEvent, decode_event, event_json
from berth.protocol.errors import WorkerLost


def test_every_field_written_is_read_back() -> None:
    choices = [
        {
            "index": 1,
            "content": "a",
            "reasoning_content": "b",
            "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}],
            "logprobs": [{"token": "a", "logprob": -0.5}],
            "finish_reason": "stop",
        }
    ]
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 2, "reasoning_tokens": 1}
    payload = event_json(
        "r",
        "finished",
        seq=7,
        worker="w",
        attempt=2,
        incarnation="i",
        choices=choices,
        usage=usage,
        tokens=4,
    )
    event = decode_event(payload)
    assert msgspec.to_builtins(event) == {
        "id": "r",
        "seq": 7,
        "type": "finished",
        "worker": "w",
        "attempt": 2,
        "incarnation": "i",
        "choices": choices,
        "usage": usage,
        "error": None,
        "status": None,
        "tokens": 4,
    }
    assert event.terminal


def test_an_error_event_carries_its_body_and_status() -> None:
    err = WorkerLost("worker w stopped")
    event = decode_event(event_json("r", "error", error=err))
    assert (event.error, event.status, event.seq) == (err.body(), err.status_code, -1)
    assert event.choices == [] and event.usage is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[1]",
        b'{"id":"r","type":"delta"}',  # no seq
        b'{"id":"r","seq":1.5,"type":"delta"}',
        b'{"id":"r","seq":0,"type":"delta","choices":[{"index":"0"}]}',
        b'{"id":"r","seq":0,"type":"delta","usage":{"prompt_tokens":1}}',
    ],
)
def test_what_is_not_a_token_event_is_refused(payload: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_event(payload)


def test_events_are_independent() -> None:
    """A default list is each event's own."""
    a, b = (
        TokenEvent(id="a", seq=0, type="delta"),
        decode_event('{"id":"b","seq":0,"type":"delta"}'),
    )
    a.choices.append(
        decode_event('{"id":"c","seq":0,"type":"delta","choices":[{"index":0}]}').choices[0]
    )
    assert b.choices == [] and TokenEvent(id="d", seq=0, type="delta").choices == []


def test_a_queued_entry_without_a_kind_is_a_chat_request() -> None:
    """Entries queued before the kind existed stay chat requests; a completion says so."""
    from berth.protocol.envelopes import QueuedRequest

    old = QueuedRequest.model_validate_json('{"id": "r", "model": "m", "request": {}}')
    assert old.kind == "chat"
    new = QueuedRequest(id="c", model="m", request={"prompt": "x"}, kind="completion")
    assert QueuedRequest.model_validate_json(new.model_dump_json()).kind == "completion"
