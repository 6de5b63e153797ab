"""The scheduler loop against a real server and Celery's real Redis transport."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import redis.asyncio
from celery import Celery

from berth.api.ingress import Ingress
from berth.protocol import keys
from berth.protocol.celeryconf import RUN_GROUP_TASK, celery_settings
from berth.protocol.envelopes import QueuedRequest, WorkerInfo
from berth.scheduler.service import Scheduler
from berth.scheduler.settings import SchedulerSettings


async def _register(
    r: redis.asyncio.Redis, wid: str, model: str = "m", capacity: int = 64, **fields: Any
) -> None:
    info = WorkerInfo(
        id=wid, model=model, capacity=capacity, queue=keys.worker_queue(wid), **fields
    )
    await r.set(keys.worker_key(wid), info.model_dump_json(), ex=30)


async def _sent_groups(r: redis.asyncio.Redis, wid: str) -> list[dict[str, Any]]:
    groups = []
    for raw in await r.lrange(keys.worker_queue(wid), 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_GROUP_TASK
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        groups.append(args[0])
    return groups


async def _run_for(r: redis.asyncio.Redis, url: str, seconds: float, **overrides: Any) -> Scheduler:
    settings = SchedulerSettings(redis_url=url, scheduler_id="s1", **overrides)
    celery = Celery("test")
    celery.conf.update(celery_settings(url))
    scheduler = Scheduler(settings, r, celery)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 5)
    return scheduler


async def _enqueue(r: redis.asyncio.Redis, *reqs: QueuedRequest) -> None:
    ingress = Ingress(r, max_queue=100, retry_after_s=1)
    for q in reqs:
        await ingress.enqueue(q)


async def test_groups_by_adapter_dispatches_and_acks(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    await _register(aredis, "w1")
    await _enqueue(
        aredis,
        *[
            QueuedRequest(id=f"r{i}", model="m", adapter="a" if i % 2 else None, request={})
            for i in range(6)
        ],
    )
    scheduler = await _run_for(aredis, redis_url, 0.5)
    groups = await _sent_groups(aredis, "w1")
    by_adapter = {g["adapter"]: sorted(q["id"] for q in g["requests"]) for g in groups}
    assert by_adapter == {None: ["r0", "r2", "r4"], "a": ["r1", "r3", "r5"]}
    assert scheduler.dispatched_total == 6
    # acknowledged and removed: nothing waits, nothing pending
    assert await aredis.xlen(keys.ingress_stream("m")) == 0
    pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
    assert pending["pending"] == 0


async def test_cancelled_request_is_dropped_with_a_terminal_event(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    await _register(aredis, "w1")
    await aredis.set(keys.cancelled_key("r1"), 1)
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.token_channel("r1"))
    await _enqueue(
        aredis,
        QueuedRequest(id="r0", model="m", request={}),
        QueuedRequest(id="r1", model="m", request={}),
    )
    await _run_for(aredis, redis_url, 0.5)
    [group] = await _sent_groups(aredis, "w1")
    assert [q["id"] for q in group["requests"]] == ["r0"]
    messages = []
    while (m := await pubsub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message":
            messages.append(json.loads(m["data"]))
    assert messages == [{"id": "r1", "seq": 0, "type": "cancelled"}]
    await pubsub.aclose()


async def test_without_a_live_worker_requests_stay_queued(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    await _register(aredis, "other", model="x")
    await _enqueue(aredis, QueuedRequest(id="r0", model="m", request={}))
    await _run_for(aredis, redis_url, 0.3)
    assert await _sent_groups(aredis, "other") == []
    pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
    assert pending["pending"] == 1
    # a worker appears: a restarted scheduler with the same name picks its pending entry up
    await _register(aredis, "w1")
    await _run_for(aredis, redis_url, 0.5)
    [group] = await _sent_groups(aredis, "w1")
    assert [q["id"] for q in group["requests"]] == ["r0"]


async def test_group_size_bounds_each_task(aredis: redis.asyncio.Redis, redis_url: str) -> None:
    await _register(aredis, "w1")
    await _enqueue(aredis, *[QueuedRequest(id=f"r{i}", model="m", request={}) for i in range(10)])
    await _run_for(aredis, redis_url, 0.5, max_group_size=4)
    sizes = sorted(len(g["requests"]) for g in await _sent_groups(aredis, "w1"))
    assert sum(sizes) == 10 and max(sizes) <= 4


async def test_an_adapter_waits_for_a_lora_slot_until_the_quantum_ends(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """One worker with one LoRA slot: adapter a opens it; b's requests stay queued (not
    sent to make the engine swap adapters mid-batch) until a has had its quantum
    (adapter_quantum x the worker's mean request time = 0.6 s), then take the slot."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=0.3)
    settings = SchedulerSettings(redis_url=redis_url, scheduler_id="s1", adapter_quantum=2.0)
    celery = Celery("test")
    celery.conf.update(celery_settings(redis_url))
    scheduler = Scheduler(settings, aredis, celery)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await _enqueue(aredis, QueuedRequest(id="a0", model="m", adapter="a", request={}))
        await asyncio.sleep(0.1)
        await _enqueue(aredis, QueuedRequest(id="b0", model="m", adapter="b", request={}))
        await asyncio.sleep(0.2)
        sent = [q["id"] for g in await _sent_groups(aredis, "w1") for q in g["requests"]]
        assert sent == ["a0"]
        pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
        assert pending["pending"] == 1
        # more of a still goes where a is open, within the quantum
        await _enqueue(aredis, QueuedRequest(id="a1", model="m", adapter="a", request={}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while len(await _sent_groups(aredis, "w1")) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        groups = await _sent_groups(aredis, "w1")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    # kombu pushes on the left: the newest message first
    order = [q["id"] for g in reversed(groups) for q in g["requests"]]
    assert order == ["a0", "a1", "b0"]
    assert scheduler._residency["w1"].open.keys() == {"b"}
    assert scheduler._residency["w1"].closed.keys() == {"a"}


async def test_a_request_cancelled_while_waiting_for_a_slot_ends_there(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """A request held for a LoRA slot is still checked for cancels: it ends with its one
    terminal event from the scheduler and never reaches the worker."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=1.0)
    settings = SchedulerSettings(redis_url=redis_url, scheduler_id="s1", adapter_quantum=100)
    celery = Celery("test")
    celery.conf.update(celery_settings(redis_url))
    scheduler = Scheduler(settings, aredis, celery)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.token_channel("b0"))
    try:
        await _enqueue(aredis, QueuedRequest(id="a0", model="m", adapter="a", request={}))
        await asyncio.sleep(0.1)
        await _enqueue(aredis, QueuedRequest(id="b0", model="m", adapter="b", request={}))
        await asyncio.sleep(0.2)
        await aredis.set(keys.cancelled_key("b0"), 1)
        message = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while message is None and loop.time() < deadline:
            m = await pubsub.get_message(timeout=0.5)
            if m is not None and m["type"] == "message":
                message = json.loads(m["data"])
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await pubsub.aclose()
    assert message == {"id": "b0", "seq": 0, "type": "cancelled"}
    sent = [q["id"] for g in await _sent_groups(aredis, "w1") for q in g["requests"]]
    assert sent == ["a0"]
    pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
    assert pending["pending"] == 0


async def test_replicas_share_a_workers_lora_slots(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """Two replicas, one worker with one LoRA slot, requests for two adapters read by
    either replica: only one adapter is open on the worker (one table for all replicas,
    changed atomically), so only its requests are sent while it has its quantum."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=1.0)
    celery = Celery("test")
    celery.conf.update(celery_settings(redis_url))
    stop = asyncio.Event()
    replicas = [
        Scheduler(
            SchedulerSettings(redis_url=redis_url, scheduler_id=f"s{i}", adapter_quantum=100),
            aredis,
            celery,
        )
        for i in range(2)
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in replicas]
    try:
        await asyncio.sleep(0.1)
        await _enqueue(
            aredis,
            *[
                QueuedRequest(id=f"r{i}", model="m", adapter="ab"[i % 2], request={})
                for i in range(8)
            ],
        )
        await asyncio.sleep(0.6)
    finally:
        stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 5) for t in tasks))
    sent = {g["adapter"] for g in await _sent_groups(aredis, "w1")}
    table = await aredis.hgetall(keys.open_adapters("w1"))
    assert len(sent) == 1
    assert {name.decode() for name in table} == sent
    pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
    assert pending["pending"] == 4  # the other adapter's requests wait
