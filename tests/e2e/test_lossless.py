"""Tokens exactly once and in order, resumable streams, nothing run twice, timeouts cancelled:
real processes (API, scheduler, worker on the fake engine) on a real server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from berth.plumbing.celeryconf import RUN_GROUP_TASK, celery_settings
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, WorkGroup
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
TENANTS = {"alice": "key-a", "bob": "key-b"}
ALICE = {"Authorization": "Bearer key-a"}
BOB = {"Authorization": "Bearer key-b"}
RESUMABLE = {**ALICE, "X-Berth-Resumable": "true"}


def _body(max_tokens: int, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    env = {
        "BERTH_API_KEYS": ",".join(f"{t}:{k}" for t, k in TENANTS.items()),
        "BERTH_LIVENESS_CHECK_S": "0.5",
        "BERTH_RESUME_GRACE_S": "20",
    }
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "100"}), "scheduler", "api", env=env
    )


def _sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """(id or None, data) of each SSE event."""
    event_id = None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[len("id: ") :]
        elif line.startswith("data: "):
            yield event_id, line[len("data: ") :]
            event_id = None


def _content(datas: list[str]) -> tuple[str, int]:
    """The streamed text, and the completion tokens the usage chunk reports."""
    text, tokens = [], -1
    for data in datas:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return "".join(text), tokens


def _expected(stack: RunningStack, max_tokens: int) -> str:
    """The fake engine's answer is deterministic: the same request, not streamed."""
    answer = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=_body(max_tokens, stream=False),
        headers=ALICE,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["message"]["content"])


def test_a_dropped_subscriber_connection_loses_no_token(stack: RunningStack) -> None:
    expected = _expected(stack, 300)
    admin = redis.Redis.from_url(stack.redis_url)
    stop = threading.Event()
    kills = 0

    def keep_killing() -> None:
        # the server drops the API's pub/sub connection (subscribed to its own channel and
        # the relays' one: the worker's cancel listener and Celery's have one) again
        # and again while tokens flow: what is published meanwhile reaches nobody
        nonlocal kills
        while not stop.wait(0.15):
            for client in admin.client_list(_type="pubsub"):
                if int(client["sub"]) >= 2:
                    kills += int(admin.client_kill_filter(_id=client["id"]))

    datas: list[str] = []
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=_body(300), headers=ALICE, timeout=60
    ) as answer:
        assert answer.status_code == 200
        killer = threading.Thread(target=keep_killing)
        killer.start()
        try:
            datas = [data for _, data in _sse(answer.iter_lines())]
        finally:
            stop.set()
            killer.join()
    assert kills >= 3
    text, tokens = _content(datas)
    assert text == expected
    assert tokens == 300
    assert datas.count("[DONE]") == 1 and datas[-1] == "[DONE]"


def _stream_until(
    stack: RunningStack, n_ids: int, headers: dict[str, str]
) -> tuple[str, list[str], str]:
    """Start a stream, read ``n_ids`` events that carry an id (a stream that is not
    resumable has none: ``n_ids`` events), then hang up."""
    datas: list[str] = []
    last_id = ""
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=_body(200), headers=headers, timeout=60
    ) as answer:
        assert answer.status_code == 200
        request_id = answer.headers["X-Request-Id"]
        seen = 0
        for event_id, data in _sse(answer.iter_lines()):
            datas.append(data)
            if event_id is not None or "X-Berth-Resumable" not in headers:
                last_id, seen = event_id or "0-0", seen + 1
                if seen == n_ids:
                    break
    return request_id, datas, last_id


def test_a_resumed_stream_continues_with_no_gap_and_no_duplicate(stack: RunningStack) -> None:
    expected = _expected(stack, 200)
    request_id, before, last_id = _stream_until(stack, 20, RESUMABLE)
    assert last_id.startswith("0-")
    # the client is gone; within the grace it comes back for the rest
    resume_url = f"{stack.url}/v1/chat/completions/{request_id}/stream"
    other = httpx.get(resume_url, headers={**BOB, "Last-Event-ID": last_id}, timeout=10)
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"
    after: list[str] = []
    ids: list[str] = [last_id]
    with httpx.stream(
        "GET", resume_url, headers={**ALICE, "Last-Event-ID": last_id}, timeout=60
    ) as answer:
        assert answer.status_code == 200
        for event_id, data in _sse(answer.iter_lines()):
            after.append(data)
            if event_id is not None:
                ids.append(event_id)
    seqs = [int(i.split("-")[1]) for i in ids]
    assert seqs == sorted(set(seqs))
    text, tokens = _content(before + after)
    assert text == expected
    assert tokens == 200
    assert after.count("[DONE]") == 1 and after[-1] == "[DONE]"
    # the whole stream again from its start, as a client that kept no id
    with httpx.stream("GET", resume_url, headers=ALICE, timeout=60) as answer:
        again = [data for _, data in _sse(answer.iter_lines())]
    assert _content(again) == (expected, 200)


def test_an_unknown_or_non_resumable_stream_is_not_found(stack: RunningStack) -> None:
    request_id, _, last_id = _stream_until(stack, 5, ALICE)  # no X-Berth-Resumable
    answer = httpx.get(
        f"{stack.url}/v1/chat/completions/{request_id}/stream",
        headers={**ALICE, "Last-Event-ID": last_id},
        timeout=10,
    )
    assert answer.status_code == 404
    # and, not resumable, it was cancelled when its client left
    r = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + 10
    while not r.exists(keys.cancelled_key(request_id)):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_duplicate_delivery_of_a_group_runs_once(stack: RunningStack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    worker = json.loads(
        next(v for k in r.scan_iter(f"{keys.WORKER_KEY_PREFIX}*") if (v := r.get(k)))
    )
    queued = QueuedRequest(
        id="dup-1", model=MODEL, request=_body(20, stream=False), tenant="alice", origin="t-1"
    )
    group = WorkGroup(model=MODEL, requests=[queued]).model_dump(mode="json")
    pubsub = r.pubsub()
    pubsub.subscribe(keys.delivery_channel("t-1"))
    app = Celery("test-sender")
    app.conf.update(celery_settings(stack.redis_url))
    # the same group sent twice, as by a scheduler that died between sending and acking
    for _ in range(2):
        app.send_task(RUN_GROUP_TASK, args=[group], queue=worker["queue"])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            events.extend(json.loads(message["data"]))
    entries: Any = r.xrange(keys.request_events("dup-1"))
    stream = [event for _, f in entries for event in json.loads(f[b"e"])]
    assert [e["type"] for e in events].count("started") == 1
    assert [e["type"] for e in events].count("finished") == 1
    assert stream == events
    pubsub.close()
