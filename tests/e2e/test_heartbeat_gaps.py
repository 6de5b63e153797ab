"""A worker whose heartbeat record is missing for a moment is not dead: after a Sentinel
failover (or a Redis restart that lost recent writes) the record is gone from the new
primary until the worker's next beat. Real processes on the fake engine; the worker is
stopped (SIGSTOP, so it cannot write the record again) and its record and index entry
deleted. Missing for less than a heartbeat TTL: no 503, no ``worker_lost``, every stream
whole. Missing for longer: the worker counts as gone (503 ``no_workers``; the stream that
had tokens is queued again to continue, on a worker other than the one counted gone, and
with none there it ends with one ``no_workers`` error after ``BERTH_NO_WORKER_TIMEOUT_S``),
and it is back once it beats again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.e2e.faults import MODEL, Load, defects, fake_text
from tests.stack import RunningStack, StackFactory

pytestmark = pytest.mark.e2e

TTL_S = 6.0
ENV = {
    "BERTH_FAKE_ENGINE": "true",
    "BERTH_FAKE_TOKENS_PER_S": "20",
    "BERTH_HEARTBEAT_TTL": str(TTL_S),
    "BERTH_LIVENESS_CHECK_S": "0.5",
    "BERTH_MAINTENANCE_INTERVAL_S": "0.5",
    # no grace for a model without workers: a worker counted gone shows at once as a 503
    "BERTH_MODEL_GRACE_S": "0",
    # the continuation of a stream whose worker counted gone waits this long for another
    "BERTH_NO_WORKER_TIMEOUT_S": "5",
}
# a test bound: how long a worker missing for good may take to be counted gone
GONE_WITHIN_S = 60.0
TOKENS = 40


@pytest.fixture
def stack(make_stack: StackFactory) -> Iterator[RunningStack]:
    with make_stack("worker", "scheduler", "api", env=ENV) as running:
        yield running


def _body(stream: bool) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": TOKENS,
        "stream": stream,
    }


class _Stream:
    """One streamed chat read on a thread: ``flowing`` once its first token came."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.flowing = threading.Event()
        self.text = ""
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        with httpx.stream(
            "POST", f"{self.url}/v1/chat/completions", json=_body(True), timeout=120
        ) as answer:
            for line in answer.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    self.errors.append(chunk["error"]["code"])
                for choice in chunk.get("choices", []):
                    self.text += choice.get("delta", {}).get("content") or ""
                if self.text:
                    self.flowing.set()
        self.flowing.set()

    def result(self) -> tuple[str, list[str]]:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the stream never ended"
        return self.text, self.errors


def _lose_record(stack: RunningStack) -> int:
    """Stop the worker and delete its record and index entry, as a failover may; its pid."""
    store = redis.Redis.from_url(stack.redis_url)
    members: Any = store.zrange(keys.WORKERS_INDEX, 0, -1)
    worker_id = members[0].decode()
    pid = next(p.pid for role, p in stack.stack.processes if role == "worker")
    os.killpg(pid, signal.SIGSTOP)
    time.sleep(0.2)  # a beat already on its way lands before the delete
    store.delete(keys.worker_key(worker_id))
    store.zrem(keys.WORKERS_INDEX, worker_id)
    store.close()
    return pid


def test_a_record_missing_for_less_than_a_ttl_ends_nothing(stack: RunningStack) -> None:
    load = Load(stack.url, streams=16, concurrency=8, tokens=TOKENS)
    load.start(jobs=4)
    stream = _Stream(stack.url)
    assert stream.flowing.wait(60)
    pid = _lose_record(stack)
    # for a third of a TTL: the worker still counts live and a new request is taken, not
    # refused
    live: list[int] = []
    answers: list[httpx.Response] = []
    late = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{stack.url}/v1/chat/completions", json=_body(False), timeout=120)
        )
    )
    late.start()
    until = time.monotonic() + TTL_S / 3
    while time.monotonic() < until:
        live.append(stack.live_workers())
        time.sleep(0.2)
    os.killpg(pid, signal.SIGCONT)

    assert set(live) == {1}
    late.join(120)
    assert [a.status_code for a in answers] == [200], answers[0].text if answers else None
    assert stream.result() == (fake_text(TOKENS), [])
    outcomes = load.finish()
    assert set(outcomes) == {"finished"}, outcomes
    assert set(load.job_outcomes()) == {"succeeded"}


def test_a_record_missing_for_longer_counts_the_worker_gone(stack: RunningStack) -> None:
    stream = _Stream(stack.url)
    assert stream.flowing.wait(60)
    pid = _lose_record(stack)
    try:
        deadline = time.monotonic() + GONE_WITHIN_S
        while stack.live_workers() != 0:
            assert time.monotonic() < deadline, "the worker was never counted gone"
            time.sleep(0.2)
        refused = httpx.post(f"{stack.url}/v1/chat/completions", json=_body(False), timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "no_workers"
        text, errors = stream.result()
        assert errors == ["no_workers"]
        assert text and text != fake_text(TOKENS)
    finally:
        os.killpg(pid, signal.SIGCONT)
    # beating again, the same worker is alive again and serves
    stack.wait_ready(60)
    load = Load(stack.url, streams=4, concurrency=2, tokens=TOKENS)
    load.start(jobs=0)
    assert not defects(outcomes := load.finish()) and set(outcomes) == {"finished"}, outcomes
