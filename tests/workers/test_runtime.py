"""The engine host (worker runtime) on the fake engine against a real server: events, cancels,
errors and the heartbeat, without Celery in between."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, WorkGroup
from berth.store.jobs import JobStore
from berth.workers.engine import make_engine
from berth.workers.runtime import EngineHost
from berth.workers.settings import WorkerSettings

# far below the 7-day default, so a record that got the default instead is told apart
JOB_TTL_S = 3600


def _started_host(redis_url: str, slots: int | None = None, **settings: Any) -> EngineHost:
    """A started host of worker w1 on the fake engine (``slots``: its requests at once)."""
    engine = make_engine(
        None,
        fake=True,
        served_model_name="m",
        tokens_per_s=100,
        adapters=["lora-a"],
        max_concurrency=slots,
    )
    running = EngineHost(
        engine,
        WorkerSettings(
            redis_url=redis_url,
            worker_id="w1",
            capacity=8,
            heartbeat_interval=0.1,
            heartbeat_ttl=1,
            job_ttl_s=JOB_TTL_S,
            **settings,
        ),
    )
    running.start()
    return running


@pytest.fixture
def host(redis_url: str) -> Iterator[EngineHost]:
    running = _started_host(redis_url)
    try:
        yield running
    finally:
        running.stop()


# the API process the test's requests came from
ORIGIN = "api-1"


def _group(*bodies: dict[str, Any], adapter: str | None = None) -> dict[str, Any]:
    reqs = [
        QueuedRequest(id=f"r{i}", model="m", adapter=adapter, request=b, origin=ORIGIN)
        for i, b in enumerate(bodies)
    ]
    return WorkGroup(model="m", adapter=adapter, requests=reqs).model_dump(mode="json")


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def _listen(
    redis_url: str, ids: list[str]
) -> tuple[redis.client.PubSub, dict[str, list[dict[str, Any]]]]:
    """Listen where the requests' API process would: its delivery channel."""
    pubsub = redis.Redis.from_url(redis_url).pubsub()
    pubsub.subscribe(keys.delivery_channel(ORIGIN))
    pubsub.get_message(timeout=1)
    return pubsub, {i: [] for i in ids}


def _drain(
    pubsub: redis.client.PubSub, got: dict[str, list[dict[str, Any]]], until_s: float = 5
) -> None:
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline and not all(
        events and events[-1]["type"] in ("finished", "error", "cancelled")
        for events in got.values()
    ):
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            for event in json.loads(message["data"]):
                got[event["id"]].append(event)


def test_group_runs_and_every_request_ends_once(host: EngineHost, redis_url: str) -> None:
    pubsub, got = _listen(redis_url, ["r0", "r1", "r2"])
    host.run_group(
        _group(_body(max_tokens=3), _body(max_tokens=2, n=2), _body(logit_bias={"99999999": 1}))
    )
    _drain(pubsub, got)
    for events in got.values():
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "started" and events[0]["worker"] == "w1"
        assert sum(e["type"] in ("finished", "error", "cancelled") for e in events) == 1
    assert got["r0"][-1]["type"] == "finished"
    assert got["r0"][-1]["usage"]["completion_tokens"] == 3
    assert got["r1"][-1]["usage"]["completion_tokens"] == 4
    assert got["r2"][-1]["type"] == "error" and got["r2"][-1]["status"] == 400
    assert got["r2"][-1]["error"]["error"]["param"] == "logit_bias"


def test_cancel_aborts_a_running_request(host: EngineHost, redis_url: str) -> None:
    pubsub, got = _listen(redis_url, ["r0"])
    runner = threading.Thread(target=host.run_group, args=(_group(_body(max_tokens=1000)),))
    runner.start()
    r = redis.Redis.from_url(redis_url)
    while not any(e["type"] == "delta" for e in got["r0"]):
        _drain(pubsub, got, until_s=0.05)
    r.publish(keys.CANCEL_CHANNEL, "r0")
    runner.join(5)
    assert not runner.is_alive()
    _drain(pubsub, got)
    assert got["r0"][-1]["type"] == "cancelled"
    assert host.engine.num_running() == 0


def test_request_cancelled_before_start_never_runs(host: EngineHost, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).set(keys.cancelled_key("r0"), 1)
    pubsub, got = _listen(redis_url, ["r0"])
    host.run_group(_group(_body(max_tokens=1000)))
    _drain(pubsub, got)
    assert [e["type"] for e in got["r0"]] == ["started", "cancelled"]


def test_heartbeat_registers_and_a_clean_stop_retires(host: EngineHost, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 2
    while not r.exists(keys.worker_key("w1")) and time.monotonic() < deadline:
        time.sleep(0.02)
    record = json.loads(r.get(keys.worker_key("w1")) or b"{}")
    assert record["model"] == "m" and record["capacity"] == 8
    assert 0 < r.pttl(keys.worker_key("w1")) <= 1000
    host.stop()
    # a clean stop leaves its last record, marked stopped (every reader: gone, not lost)
    last = json.loads(r.get(keys.worker_key("w1")) or b"{}")
    assert last["stopped"] is True and last["incarnation"] == record["incarnation"]
    assert 0 < r.pttl(keys.worker_key("w1")) <= 1000


def test_heartbeat_reports_requests_per_adapter_and_the_mean_request_time(
    host: EngineHost, redis_url: str
) -> None:
    """What the scheduler's LoRA placement reads: requests held per adapter while they run,
    and how long requests take once some have ended."""
    r = redis.Redis.from_url(redis_url)

    def record() -> dict[str, Any]:
        return json.loads(r.get(keys.worker_key("w1")) or b"{}")

    runner = threading.Thread(
        target=host.run_group,
        args=(_group(_body(max_tokens=60), _body(max_tokens=60), adapter="lora-a"),),
    )
    runner.start()
    deadline = time.monotonic() + 5
    while record().get("adapter_running") != {"lora-a": 2} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert record()["adapter_running"] == {"lora-a": 2}
    assert record()["mean_run_s"] is None  # nothing has ended yet
    runner.join(10)
    deadline = time.monotonic() + 2
    while record().get("adapter_running") and time.monotonic() < deadline:
        time.sleep(0.02)
    final = record()
    assert final["adapter_running"] == {}
    # 60 tokens at 100 tokens/s
    assert 0.5 <= final["mean_run_s"] < 5


def test_a_finished_job_keeps_the_configured_ttl(host: EngineHost, redis_url: str) -> None:
    """The worker's finish script sets the job record's expiry from BERTH_JOB_TTL_S."""
    queued = QueuedRequest(id="job-ttl", model="m", request=_body(max_tokens=2), job=True)

    async def create() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await JobStore(client, JOB_TTL_S).create(queued, tenant="t")
        finally:
            await client.aclose()

    asyncio.run(create())
    host.run_group(WorkGroup(model="m", requests=[queued]).model_dump(mode="json"))
    r = redis.Redis.from_url(redis_url)
    assert r.hget(keys.job_key("job-ttl"), "status") == b"succeeded"
    assert 0 < r.ttl(keys.job_key("job-ttl")) <= JOB_TTL_S


def test_events_also_go_to_the_request_stream_in_order(host: EngineHost, redis_url: str) -> None:
    pubsub, got = _listen(redis_url, ["r0"])
    host.run_group(_group(_body(max_tokens=5)))
    _drain(pubsub, got)
    r = redis.Redis.from_url(redis_url)
    entries: Any = r.xrange(keys.request_events("r0"))
    stored = [json.loads(e[1][b"e"]) for e in entries]
    # an entry holds the events written together; its id is the last one's
    assert [e[0].decode() for e in entries] == [
        keys.event_entry_id(0, batch[-1]["seq"]) for batch in stored
    ]
    assert [event for batch in stored for event in batch] == got["r0"]
    assert 0 < r.ttl(keys.request_events("r0")) <= keys.REQUEST_EVENTS_TTL_S


def test_a_second_delivery_of_the_same_group_runs_once(host: EngineHost, redis_url: str) -> None:
    pubsub, got = _listen(redis_url, ["r0"])
    group = _group(_body(max_tokens=5))
    host.run_group(group)
    host.run_group(group)  # the scheduler sent it again (it died before acking)
    _drain(pubsub, got, until_s=1)
    assert [e["type"] for e in got["r0"]].count("started") == 1
    assert sum(e["type"] == "finished" for e in got["r0"]) == 1
    assert redis.Redis.from_url(redis_url).get(keys.run_key("r0", 0)) == b"w1"
    # the next attempt (its first worker died, the API queued it again) does run
    again = json.loads(json.dumps(group))
    again["requests"][0]["attempt"] = 1
    host.run_group(again)
    more: dict[str, list[dict[str, Any]]] = {"r0": []}
    _drain(pubsub, more)
    got["r0"] += more["r0"]
    assert [(e.get("attempt", 0), e["type"]) for e in got["r0"] if e["type"] == "started"] == [
        (0, "started"),
        (1, "started"),
    ]


def test_a_group_sent_to_an_earlier_incarnation_is_dropped(
    host: EngineHost, redis_url: str
) -> None:
    """A worker restarted under its id receives what was sent to its predecessor: it does
    not run it (the waiting API queues it again as the next attempt), and what is sent to
    this incarnation runs."""
    pubsub, got = _listen(redis_url, ["r0"])
    stale = _group(_body(max_tokens=3))
    stale["incarnation"] = "an-earlier-process"
    host.run_group(stale)
    current = _group(_body(max_tokens=3))
    current["incarnation"] = host.incarnation
    current["requests"][0]["attempt"] = 1
    host.run_group(current)
    _drain(pubsub, got)
    assert [e.get("attempt", 0) for e in got["r0"] if e["type"] == "started"] == [1]
    assert [e.get("attempt", 0) for e in got["r0"]] == [1] * len(got["r0"])
    assert got["r0"][-1]["type"] == "finished"
    assert redis.Redis.from_url(redis_url).get(keys.run_key("r0", 0)) is None


# -- the drain (SIGTERM) and continued streams ----------------------------------------------


def _record(redis_url: str) -> dict[str, Any]:
    return json.loads(redis.Redis.from_url(redis_url).get(keys.worker_key("w1")) or b"{}")


def test_a_drain_finishes_what_runs_and_hands_back_what_has_not_started(redis_url: str) -> None:
    host = _started_host(redis_url, slots=1, drain_s=30)
    try:
        pubsub, got = _listen(redis_url, ["r0", "r1"])
        runner = threading.Thread(
            target=host.run_group, args=(_group(_body(max_tokens=20), _body(max_tokens=20)),)
        )
        runner.start()
        while not any(e["type"] == "delta" for e in got["r0"]):
            _drain(pubsub, got, until_s=0.05)
        host.drain()
        deadline = time.monotonic() + 5
        while not _record(redis_url).get("draining") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _record(redis_url)["draining"] is True
        runner.join(10)
        assert not runner.is_alive()
        for _ in range(20):  # r1's hand-back is its last event: no terminal one comes
            _drain(pubsub, got, until_s=0.05)
        # r0 ran to its end; r1, waiting for the engine's one slot, went back untouched
        assert got["r0"][-1]["type"] == "finished"
        assert got["r0"][-1]["usage"]["completion_tokens"] == 20
        assert [e["type"] for e in got["r1"]] == ["started", "requeued"]
        assert got["r1"][-1]["seq"] == 1 and got["r1"][-1]["tokens"] == 0
        # a group sent before the schedulers saw the drain goes back without starting
        pubsub2, got2 = _listen(redis_url, ["r0"])
        host.run_group(
            WorkGroup(
                model="m",
                requests=[
                    QueuedRequest(id="r0", model="m", request=_body(), attempt=1, origin=ORIGIN)
                ],
            ).model_dump(mode="json")
        )
        for _ in range(20):
            _drain(pubsub2, got2, until_s=0.05)
        assert [(e["type"], e["seq"], e["attempt"]) for e in got2["r0"]] == [("requeued", 0, 1)]
    finally:
        host.stop()
    assert _record(redis_url)["stopped"] is True


def test_at_the_drain_s_end_a_running_stream_is_handed_back_with_its_tokens(
    redis_url: str,
) -> None:
    host = _started_host(redis_url, drain_s=0.3)
    try:
        pubsub, got = _listen(redis_url, ["r0"])
        runner = threading.Thread(target=host.run_group, args=(_group(_body(max_tokens=1000)),))
        runner.start()
        while not any(e["type"] == "delta" for e in got["r0"]):
            _drain(pubsub, got, until_s=0.05)
        host.drain()
        runner.join(10)
        assert not runner.is_alive()
        for _ in range(20):
            _drain(pubsub, got, until_s=0.05)
    finally:
        host.stop()
    events = got["r0"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "requeued"
    assert not any(e["type"] in ("finished", "error", "cancelled") for e in events)
    deltas = [e for e in events if e["type"] == "delta"]
    text = "".join(c.get("content", "") for e in deltas for c in e["choices"])
    # the hand-back counts every token the client has: where the continuation goes on
    assert events[-1]["tokens"] == len(text.split()) == deltas[-1]["tokens"]


def test_a_continuation_numbers_its_events_on_and_counts_the_tokens_before_it(
    host: EngineHost, redis_url: str
) -> None:
    pubsub, got = _listen(redis_url, ["r0"])
    body = {
        **_body(max_completion_tokens=2),
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "the quick brown "},
        ],
        "continue_final_message": True,
    }
    queued = QueuedRequest(
        id="r0",
        model="m",
        request=body,
        attempt=1,
        origin=ORIGIN,
        continuation={"seq": 7, "tokens": 3},  # type: ignore[arg-type]
    )
    host.run_group(WorkGroup(model="m", requests=[queued]).model_dump(mode="json"))
    _drain(pubsub, got)
    events = got["r0"]
    assert [e["seq"] for e in events] == list(range(7, 7 + len(events)))
    assert all(e["attempt"] == 1 for e in events)
    text = "".join(c.get("content", "") for e in events for c in e.get("choices", []))
    assert text == "fox jumps "  # the fake engine's words 3 and 4: the answer goes on
    assert events[-1]["type"] == "finished"
    assert events[-1]["usage"]["completion_tokens"] == 5
