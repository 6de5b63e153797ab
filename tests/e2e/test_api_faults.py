"""An API process killed with SIGKILL under load (streams and jobs), then started again:
the requests it held are cancelled in the engine (the worker writes their ``cancelled``
event and the cancel mark), a resumable stream is kept for its grace and resumed through the
new process, and jobs (which need no connection) all succeed once. Real processes on a real
server; the fake engine's answer is deterministic, so the resumed text is compared whole."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.e2e.faults import Load, fake_text, served_again
from tests.stack import FAKE_ENGINE, StackFactory

pytestmark = pytest.mark.e2e

# long enough that nothing of the dead API's streams ends before the worker notices
TOKENS = 1000
# a bound for the test (the worker judges an API dead within about 2 x keys.API_ALIVE_S)
WAIT_S = 60.0


def _body(tokens: int) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
    }


def _events(client: redis.Redis, request_id: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(keys.request_events(request_id))
    # an entry holds the events written together
    return [event for _, fields in entries for event in json.loads(fields[b"e"])]


def _ends(client: redis.Redis) -> dict[str, str]:
    """Each interactive request's last worker event (request id -> its type)."""
    ends = {}
    for key in client.scan_iter(match=keys.request_events("*")):
        request_id = key.decode().removeprefix(keys.request_events(""))
        events = _events(client, request_id)
        ends[request_id] = events[-1]["type"] if events else ""
    return ends


def _text(datas: list[str]) -> str:
    out: list[str] = []
    for data in datas:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        out.extend(c["delta"].get("content") or "" for c in chunk["choices"])
    return "".join(out)


def test_api_killed_its_requests_are_cancelled_resumable_ones_resumed(
    make_stack: StackFactory,
) -> None:
    env = {"BERTH_RESUME_GRACE_S": "40", "BERTH_ORIGIN_CHECK_S": "0.5"}
    worker = {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "40"}
    stack = make_stack(("worker", worker), "scheduler", "api", env=env)
    admin = redis.Redis.from_url(stack.redis_url)
    probe = httpx.post(f"{stack.url}/v1/chat/completions", json=dict(_body(4), stream=False))
    assert probe.status_code == 200, probe.text

    load = Load(stack.url, streams=6, concurrency=6, tokens=TOKENS)
    load.start(jobs=4)
    datas: list[str] = []
    last_id = ""
    with httpx.stream(
        "POST",
        f"{stack.url}/v1/chat/completions",
        json=_body(TOKENS),
        headers={"X-Berth-Resumable": "true"},
        timeout=30,
    ) as answer:
        assert answer.status_code == 200
        resumable = answer.headers["X-Request-Id"]
        event_id = None
        for line in answer.iter_lines():
            if line.startswith("id: "):
                event_id = line[len("id: ") :]
            elif line.startswith("data: "):
                datas.append(line[len("data: ") :])
                if event_id is not None:
                    last_id = event_id
                    if len(datas) >= 5:
                        break
        # every stream of the load reached the worker (the probe's, the resumable one's and
        # the load's 6 have events): one still connecting when the API dies is refused
        deadline = time.monotonic() + WAIT_S
        while len(ends := _ends(admin)) < 8 or not all(ends.values()):
            assert time.monotonic() < deadline, ends
            time.sleep(0.1)
        api = [p for role, p in stack.stack.processes if role == "api"][0]
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
        stack.stack.processes.remove(("api", api))
    streams = load.finish()
    assert all(s.startswith("connection-lost") for s in streams), streams
    stack.start("api")
    stack.wait_ready(60)

    # every request of the dead API ends: the resumable one is still running
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        ends = _ends(admin)
        if len(ends) == 8 and sum(t == "cancelled" for t in ends.values()) == 6:
            break
        time.sleep(0.5)
    ends = _ends(admin)
    others = {r: t for r, t in ends.items() if r != resumable}
    # the probe answered before the load, and the 6 streams the kill cut, cancelled
    assert sorted(others.values()) == ["cancelled"] * 6 + ["finished"], ends
    assert ends[resumable] == "delta", ends  # still running, kept for its grace
    for request_id, end in others.items():
        if end == "cancelled":
            assert admin.exists(keys.cancelled_key(request_id))
            assert _events(admin, request_id)[-1]["seq"] >= 0  # written by the worker

    # the resumable stream continues through the new API process, whole
    with httpx.stream(
        "GET",
        f"{stack.url}/v1/chat/completions/{resumable}/stream",
        headers={"Last-Event-ID": last_id},
        timeout=WAIT_S,
    ) as rest:
        assert rest.status_code == 200
        datas += [ln[len("data: ") :] for ln in rest.iter_lines() if ln.startswith("data: ")]
    assert datas.count("[DONE]") == 1 and datas[-1] == "[DONE]"
    assert _text(datas) == fake_text(TOKENS)
    assert _events(admin, resumable)[-1]["type"] == "finished"

    # jobs need no connection: each ran once, to its end
    assert load.job_outcomes() == {"succeeded": 4}
    for job_id in load.jobs:
        entries: Any = admin.xrange(keys.job_events(job_id))
        events = [json.loads(fields[b"e"]) for _, fields in entries]
        assert sum(e["type"] == "started" for e in events) == 1, events
    assert served_again(stack.url)
