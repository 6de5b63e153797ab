"""A hostile output constraint against the real stack (vLLM CPU engine): the worker compiles
it under budget off its event loop, so its heartbeat and other requests carry on and the
request ends with a 400 naming ``response_format``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import redis

from berth.protocol import keys
from tests.stack import RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

MODEL = "berth-tiny"
HELLO: Any = [{"role": "user", "content": "Hello there"}]
# issue 11: this schema spun the worker's main process for minutes
HOSTILE = {
    "type": "json_schema",
    "json_schema": {
        "name": "a",
        "schema": {
            "type": "object",
            "properties": {
                "a": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "[a-z]{1,50000}"},
                    "minItems": 1000000,
                }
            },
            "required": ["a"],
        },
    },
}


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[RunningStack]:
    redis.Redis.from_url(redis_server_url).flushdb()
    # the API's own bounds are lifted so the schema reaches the worker's compile step
    huge = 1 << 30
    limits = {"max_json_schema_repetition": huge, "max_regex_repetition": huge}
    running = RunningStack(
        redis_server_url,
        env={"BERTH_REQUEST_LIMITS": json.dumps(limits), "BERTH_GRAMMAR_TIMEOUT_S": "5"},
    )
    running.start("worker", "scheduler", "api")
    try:
        running.wait_ready(400)
        yield running
    finally:
        running.stop()


def test_hostile_schema_costs_neither_heartbeat_nor_other_requests(stack: RunningStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
    r = redis.Redis.from_url(stack.redis_url)
    gaps: list[float] = []
    done = threading.Event()

    def watch_heartbeat() -> None:
        while not done.is_set():
            if not r.keys(f"{keys.WORKER_KEY_PREFIX}*"):
                gaps.append(time.monotonic())
            time.sleep(0.1)

    def normal() -> str | None:
        reply = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=64, extra_body={"ignore_eos": True}
        )
        return reply.choices[0].finish_reason

    def hostile() -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                max_tokens=8,
                response_format=HOSTILE,  # type: ignore[call-overload]
            )
        return refused.value

    watcher = threading.Thread(target=watch_heartbeat)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            refused = pool.submit(hostile)
            # normal requests keep being served while the hostile one compiles
            served = [pool.submit(normal) for _ in range(6)]
            assert [f.result() for f in served] == ["length"] * 6
            err = refused.result()
            # once more: the verdict is cached, and the answer is the same
            again = pool.submit(hostile).result()
    finally:
        done.set()
        watcher.join()
    body = err.body if isinstance(err.body, dict) else {}
    assert body.get("param") == "response_format", err.body
    assert "response_format" in str(body.get("message"))
    assert again.body == err.body
    assert gaps == [], "the worker's heartbeat lapsed while the schema compiled"
    assert normal() == "length"
