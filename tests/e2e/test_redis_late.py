"""Roles started before Redis (compose or Kubernetes may start the API first): every role
waits for it instead of exiting; meanwhile the API answers its probes and refuses requests
with a clean 503, and once Redis is up the stack serves, streamed and not."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.faults import HANG_S, MODEL, fake_text, stream_outcome
from tests.stack import FAKE_ENGINE, RunningStack, free_port
from tests.valkey import Valkey

pytestmark = pytest.mark.e2e

ENV = FAKE_ENGINE | {"BERTH_HEARTBEAT_TTL": "3", "BERTH_LIVENESS_CHECK_S": "0.5"}
# how long Redis stays away once the API answers: past the Redis client's retries of one
# command (about 18 s, berth/plumbing/redisconn.py), so a role that gives up after them is caught
AWAY_S = 20.0


def _chat(stream: bool) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }


def _until_answering(stack: RunningStack, client: httpx.Client) -> httpx.Response:
    deadline = time.monotonic() + HANG_S
    while True:
        assert stack.stack.dead() is None, "a role exited while Redis was away"
        try:
            return client.get("/health")
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def _refused_cleanly(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"]
    assert answer.json()["error"]["code"] == "store_unavailable", answer.text


def test_roles_started_before_redis_wait_for_it_then_serve(tmp_path: Path) -> None:
    valkey = Valkey(tmp_path, free_port())  # its port: nobody listens there yet
    stack = RunningStack(valkey.url, env=ENV)
    try:
        stack.start("api", "worker", "scheduler")
        with httpx.Client(base_url=stack.url, timeout=HANG_S) as client:
            assert _until_answering(stack, client).status_code == 200
            away_until = time.monotonic() + AWAY_S
            while time.monotonic() < away_until:
                assert client.get("/health").status_code == 200
                ready = client.get("/ready")
                assert ready.status_code == 503, ready.text
                assert ready.json()["reason"].startswith("redis"), ready.text
                _refused_cleanly(client.post("/v1/chat/completions", json=_chat(False)))
                _refused_cleanly(client.post("/v1/chat/completions", json=_chat(True)))
                assert stack.stack.dead() is None, "a role exited while Redis was away"
                time.sleep(1)

            valkey.start()
            deadline = time.monotonic() + HANG_S
            served = streamed = ""
            while time.monotonic() < deadline and not (served == "ok" and streamed):
                assert stack.stack.dead() is None, "a role exited when Redis came"
                if served != "ok":
                    answer = client.post("/v1/chat/completions", json=_chat(False))
                    if answer.status_code == 200:
                        text = answer.json()["choices"][0]["message"]["content"]
                        assert text == fake_text(4), answer.text
                        served = "ok"
                    else:
                        served = f"{answer.status_code}: {answer.text}"
                if served == "ok":
                    outcome = stream_outcome(client, _chat(True), fake_text(4))
                    if outcome == "finished":
                        streamed = outcome
                    else:
                        # while the stack settles only a clean refusal is allowed
                        assert outcome == "refused:503", outcome
                time.sleep(0.3)
            assert served == "ok", f"not served after Redis came: {served}"
            assert streamed == "finished", "no streamed chat served after Redis came"
        assert stack.stack.dead() is None
    finally:
        stack.stop()
        valkey.stop()
