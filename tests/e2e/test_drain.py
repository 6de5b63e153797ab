"""Workers come and go under load and no client notices: a worker given SIGTERM drains (its
streams finish; what it cannot finish in BERTH_DRAIN_S continues on another worker), a
request arriving during a drain is served by another worker, and the streams of a worker
killed mid-answer continue on another worker or on the same one restarted under its id.
Real processes (API, scheduler, workers on the fake engine, whose answer is a function of
the position, so a continued answer is whole only if no token is repeated or missing)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.e2e.faults import HANG_S, Load, fake_text, stream_outcome
from tests.stack import RunningStack, StackFactory

pytestmark = pytest.mark.e2e

ENV = {
    "BERTH_FAKE_ENGINE": "true",
    "BERTH_FAKE_TOKENS_PER_S": "20",
    "BERTH_HEARTBEAT_TTL": "2",
    "BERTH_LIVENESS_CHECK_S": "0.5",
    "BERTH_MAINTENANCE_INTERVAL_S": "0.5",
}
MODEL = "fake-model"


@pytest.fixture
def stack(make_stack: StackFactory) -> Iterator[RunningStack]:
    with make_stack(env=ENV, ready=False) as running:  # each test starts its own roles
        yield running


def _worker(stack: RunningStack, worker_id: str) -> Any:
    """The newest process started as ``worker_id`` (roles are started one by one here)."""
    return [p for role, p in stack.stack.processes if role == worker_id][-1]


def _start_worker(stack: RunningStack, worker_id: str, **env: str) -> None:
    stack.stack.start("worker", stack.role_env(BERTH_WORKER_ID=worker_id, **env))
    stack.stack.processes[-1] = (worker_id, stack.stack.processes[-1][1])


def _record(store: redis.Redis, worker_id: str) -> dict[str, Any]:
    return json.loads(store.get(keys.worker_key(worker_id)) or b"{}")


def _wait_for(what: str, done: Any, timeout_s: float = HANG_S) -> None:
    """A bound that catches "never", not a timing."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _body(tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
    }


class Streams:
    """``count`` streams sent at once, each classified as it ends (``stream_outcome``)."""

    def __init__(self, url: str, count: int, tokens: int) -> None:
        self.outcomes: list[str] = []
        # streams whose client has its first text: running in the engine, not waiting
        self.speaking = 0
        self._lock = threading.Lock()

        def spoke() -> None:
            with self._lock:
                self.speaking += 1

        def one() -> None:
            with httpx.Client(base_url=url, timeout=HANG_S) as client:
                outcome = stream_outcome(client, _body(tokens), fake_text(tokens), spoke)
            with self._lock:
                self.outcomes.append(outcome)

        self._threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def finish(self) -> Counter[str]:
        for thread in self._threads:
            thread.join(HANG_S * 2)
        assert not any(t.is_alive() for t in self._threads), "a client never returned"
        return Counter(self.outcomes)


def test_sigterm_with_twenty_streams_running_finishes_every_one(stack: RunningStack) -> None:
    _start_worker(stack, "w1")
    stack.start("scheduler", "api")
    stack.wait_ready(120)
    store = redis.Redis.from_url(stack.redis_url)
    streams = Streams(stack.url, 20, tokens=60)  # 3 s each
    # every stream has its first text (one still waiting for the engine when the drain
    # starts is handed back, and with no other worker would end with no_workers)
    _wait_for("twenty streams speaking", lambda: streams.speaking == 20)
    worker = _worker(stack, "w1")
    os.kill(worker.pid, signal.SIGTERM)
    _wait_for("w1 draining", lambda: _record(store, "w1").get("draining"))
    assert streams.finish() == {"finished": 20}
    # it exits once its streams are done, cleanly, and says it stopped: not lost
    assert worker.wait(HANG_S) == 0
    assert _record(store, "w1").get("stopped") is True


def test_a_drain_hands_back_what_it_cannot_finish_and_a_new_request_goes_elsewhere(
    stack: RunningStack,
) -> None:
    # a drain shorter than the streams: what still runs at its end continues on w2
    _start_worker(stack, "w1", BERTH_DRAIN_S="1")
    stack.start("scheduler", "api")
    stack.wait_ready(120)
    store = redis.Redis.from_url(stack.redis_url)
    load = Load(stack.url, streams=16, concurrency=8, tokens=80)  # 4 s each
    load.start(jobs=4)
    _wait_for("streams running on w1", lambda: _record(store, "w1").get("running", 0) >= 8)
    _start_worker(stack, "w2")
    stack.wait_ready(120, workers=2)
    w1 = _worker(stack, "w1")
    os.kill(w1.pid, signal.SIGTERM)
    _wait_for("w1 draining", lambda: _record(store, "w1").get("draining"))
    # a request arriving during the drain: served by w2, never sent to w1
    with httpx.Client(base_url=stack.url, timeout=HANG_S) as client:
        answer = client.post("/v1/chat/completions", json={**_body(4), "stream": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == fake_text(4)
    entries: Any = store.xrange(keys.request_events(answer.json()["id"]))
    # each entry: one event, or a JSON array of the events written together
    stored = [json.loads(fields[b"e"]) for _, fields in entries]
    events = [e for item in stored for e in (item if isinstance(item, list) else [item])]
    served_by = {event.get("worker") for event in events}
    assert served_by == {"w2"}, served_by
    # its drain over, it exits cleanly and says so (its record lives a heartbeat TTL)
    assert w1.wait(HANG_S) == 0
    assert _record(store, "w1").get("stopped") is True
    assert load.finish() == {"finished": load.streams}
    assert load.job_kinds(store) == {"once": 4}


@pytest.mark.parametrize("after", ["another-worker", "restarted-under-its-id"])
def test_a_worker_killed_mid_stream_under_load_every_stream_completes_whole(
    stack: RunningStack, after: str
) -> None:
    _start_worker(stack, "w1")
    if after == "another-worker":
        _start_worker(stack, "w2")
    stack.start("scheduler", "api")
    stack.wait_ready(120, workers=2 if after == "another-worker" else 1)
    store = redis.Redis.from_url(stack.redis_url)
    load = Load(stack.url, streams=24, concurrency=12, tokens=60)
    load.start(jobs=4)
    _wait_for("streams running on w1", lambda: _record(store, "w1").get("running", 0) >= 4)
    time.sleep(0.5)  # a token or more into each: the kill cuts streams mid-answer
    os.killpg(_worker(stack, "w1").pid, signal.SIGKILL)
    if after == "restarted-under-its-id":
        _start_worker(stack, "w1")
    assert load.finish() == {"finished": load.streams}
    assert load.job_kinds(store) == {"once": 4}
