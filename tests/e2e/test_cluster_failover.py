"""Two real CPU workers (vLLM, tiny model) and two scheduler replicas under load; one worker
and one scheduler are killed with SIGKILL. Every request completes or ends with an error
event; none hangs; none is answered twice."""

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

from tests.stack import RunningStack, StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.fixture
def cluster(make_stack: StackFactory) -> Iterator[RunningStack]:
    with make_stack(
        ("worker", {"BERTH_WORKER_ID": "w-a"}),
        ("worker", {"BERTH_WORKER_ID": "w-b"}),
        ("scheduler", {"BERTH_SCHEDULER_ID": "s-a"}),
        ("scheduler", {"BERTH_SCHEDULER_ID": "s-b"}),
        "api",
        env={"BERTH_HEARTBEAT_TTL": "3", "BERTH_LIVENESS_CHECK_S": "0.5", "BERTH_CAPACITY": "16"},
        timeout_s=400,
        workers=2,
    ) as running:
        yield running


def _one_stream(url: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": "berth-tiny",
        "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": tokens,
        "stream": True,
        "ignore_eos": True,
    }
    payloads = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=90) as answer:
        assert answer.status_code == 200, answer.read()
        payloads = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    return {
        "done": payloads.count("[DONE]"),
        "last_is_done": bool(payloads) and payloads[-1] == "[DONE]",
        "errors": sum("error" in c for c in chunks),
        "finishes": sum(
            1 for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")
        ),
        "tokens": sum(
            1 for c in chunks for ch in c.get("choices", []) if ch.get("delta", {}).get("content")
        ),
    }


def test_kill_a_worker_and_a_scheduler_under_load(cluster: RunningStack) -> None:
    results: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                results.append(_one_stream(cluster.url, 300))
            except BaseException as err:  # a hang shows up as a timeout here
                failures.append(err)
                return

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    store = redis.Redis.from_url(cluster.redis_url)
    deadline = time.monotonic() + 60
    # kill once both workers are busy and streams have completed: real load, real victims
    while len(results) < 6 or not all(
        json.loads(store.get(f"berth:worker:{w}") or b"{}").get("engine_running", 0) > 0
        for w in ("w-a", "w-b")
    ):
        assert time.monotonic() < deadline and not failures, (len(results), failures)
        time.sleep(0.05)
    procs = {
        role: [p for r, p in cluster.stack.processes if r == role]
        for role in ("worker", "scheduler")
    }
    os.killpg(procs["worker"][0].pid, signal.SIGKILL)
    os.killpg(procs["scheduler"][0].pid, signal.SIGKILL)
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads)
    for r in results:
        # exactly one end: [DONE] last, and either one finish or one error event
        assert r["done"] == 1 and r["last_is_done"], r
        assert (r["finishes"], r["errors"]) in ((1, 0), (0, 1)), r
    completed = [r for r in results if r["finishes"] == 1]
    assert all(r["tokens"] >= 1 for r in completed)
    # the survivors keep serving after the failures
    assert _one_stream(cluster.url, 8)["finishes"] == 1
    assert store.exists("berth:worker:w-b") and not store.exists("berth:worker:w-a")
