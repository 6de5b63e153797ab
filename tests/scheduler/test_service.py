"""The scheduler loop against a real server and Celery's real Redis transport."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio
from celery import Celery

from berth.api.intake.ingress import Ingress
from berth.api.settings import ApiSettings
from berth.limits import Quotas, limit_book
from berth.plumbing.celeryconf import RUN_GROUP_TASK, celery_settings
from berth.protocol import keys
from berth.protocol.catalog import CatalogModel
from berth.protocol.envelopes import QueuedRequest, WorkerInfo
from berth.scheduler.service import Scheduler
from berth.scheduler.settings import SchedulerSettings
from berth.store import queue
from berth.store.catalog import Catalog
from berth.store.jobs import JobStore
from berth.store.registry import announce


async def _register(
    r: redis.asyncio.Redis, wid: str, model: str = "m", capacity: int = 64, **fields: Any
) -> None:
    info = WorkerInfo(
        id=wid, model=model, capacity=capacity, queue=keys.worker_queue(wid), **fields
    )
    await announce(r, keys.WORKERS_INDEX, wid, keys.worker_key(wid), info.model_dump_json(), 30)


async def _sent_groups(r: redis.asyncio.Redis, wid: str) -> list[dict[str, Any]]:
    groups = []
    for raw in await r.lrange(keys.worker_queue(wid), 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_GROUP_TASK
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        groups.append(args[0])
    return groups


async def _run_until(
    r: redis.asyncio.Redis, url: str, condition: Callable[[], Awaitable[bool]], **overrides: Any
) -> Scheduler:
    """Run a scheduler until ``condition`` holds (a state, never a span of time: a slow
    machine makes it take longer, not fail), then stop it."""
    async with _running(r, url, **overrides) as scheduler:
        await _until(condition, 30)
    return scheduler


async def _enqueue(r: redis.asyncio.Redis, *reqs: QueuedRequest) -> None:
    settings = ApiSettings(redis_url="redis://unused", max_queue_per_model=100)
    ingress = Ingress(r, Quotas(r, settings, limit_book(settings)))
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
    scheduler = await _run_until(aredis, redis_url, lambda: _done(aredis, 6))
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
    await pubsub.subscribe(keys.delivery_channel("api-1"))
    await _enqueue(
        aredis,
        QueuedRequest(id="r0", model="m", request={}),
        QueuedRequest(id="r1", model="m", request={}, origin="api-1"),
    )
    await _run_until(aredis, redis_url, lambda: _done(aredis, 1))
    [group] = await _sent_groups(aredis, "w1")
    assert [q["id"] for q in group["requests"]] == ["r0"]
    messages = []
    while (m := await pubsub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message":
            messages.extend(json.loads(m["data"]))
    assert messages == [{"id": "r1", "seq": -1, "type": "cancelled"}]
    await pubsub.aclose()


async def test_without_a_live_worker_requests_stay_queued(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    await _register(aredis, "other", model="x")
    await _enqueue(aredis, QueuedRequest(id="r0", model="m", request={}))
    # read and held, not dispatched: the entry is pending in the group
    await _run_until(aredis, redis_url, lambda: _pending_is(aredis, 1))
    assert await _sent_groups(aredis, "other") == []
    pending = await aredis.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP)
    assert pending["pending"] == 1
    # a worker appears: a restarted scheduler with the same name picks its pending entry up
    await _register(aredis, "w1")
    await _run_until(aredis, redis_url, lambda: _done(aredis, 1))
    [group] = await _sent_groups(aredis, "w1")
    assert [q["id"] for q in group["requests"]] == ["r0"]


async def test_group_size_bounds_each_task(aredis: redis.asyncio.Redis, redis_url: str) -> None:
    await _register(aredis, "w1")
    await _enqueue(aredis, *[QueuedRequest(id=f"r{i}", model="m", request={}) for i in range(10)])
    await _run_until(aredis, redis_url, lambda: _done(aredis, 10), max_group_size=4)
    sizes = sorted(len(g["requests"]) for g in await _sent_groups(aredis, "w1"))
    assert sum(sizes) == 10 and max(sizes) <= 4


async def test_entries_of_two_lanes_with_one_id_are_both_dispatched(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """An entry id is unique only within its stream: two lanes' XADDs in the same
    millisecond (a chat request and a job queued again at once) get the same id. Both
    entries are dispatched and acknowledged; neither is taken for the other."""
    await _register(aredis, "w1")
    for request in (
        QueuedRequest(id="chat", model="m", request={}),
        QueuedRequest(id="job", model="m", request={}, lane="job", job=True),
    ):
        stream = keys.ingress_stream(request.model, request.lane)
        await aredis.xadd(stream, queue.encode_entry(request), id="1-1")
    async with _running(aredis, redis_url):
        await _until(lambda: _has_sent(aredis, 2))
        await _until(lambda: _none_pending(aredis, "interactive", "job"))
    assert sorted(await _sent_ids(aredis, "w1")) == ["chat", "job"]


async def test_a_replica_reads_every_entry_it_holds_again_when_it_starts_over(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """Entries delivered to a replica and never acknowledged (its loop started over after an
    outage, or its process came back under the same id) are all read again: more of them
    than one read's page (read_count) takes."""
    await _register(aredis, "w1", capacity=10_000)
    ids = [f"r{i}" for i in range(600)]
    await _enqueue(aredis, *[QueuedRequest(id=i, model="m", request={}) for i in ids])
    stream = keys.ingress_stream("m")
    await queue.create_group(aredis, stream)
    await queue.read(aredis, "s1", [stream], ">", len(ids), None)
    assert await _pending(aredis) == len(ids)
    async with _running(aredis, redis_url, read_count=256):
        await _until(lambda: _done(aredis, len(ids)))
    assert sorted(await _sent_ids(aredis, "w1")) == sorted(ids)


@contextlib.asynccontextmanager
async def _running(
    r: redis.asyncio.Redis, url: str, scheduler_id: str = "s1", **overrides: Any
) -> AsyncIterator[Scheduler]:
    """A scheduler replica running beside the test until the block ends."""
    settings = SchedulerSettings(redis_url=url, scheduler_id=scheduler_id, **overrides)
    celery = Celery("test")
    celery.conf.update(celery_settings(url))
    scheduler = Scheduler(settings, r, celery)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        yield scheduler
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _sent_ids(r: redis.asyncio.Redis, wid: str) -> list[str]:
    """Request ids sent to a worker, oldest first (kombu pushes on the left)."""
    return [q["id"] for g in reversed(await _sent_groups(r, wid)) for q in g["requests"]]


async def _pending(r: redis.asyncio.Redis) -> int:
    """Entries of model m's stream read and not acknowledged (0 before the group exists)."""
    try:
        return int((await r.xpending(keys.ingress_stream("m"), keys.SCHEDULER_GROUP))["pending"])
    except redis.ResponseError:  # NOGROUP: no scheduler has read the stream yet
        return 0


async def _none_pending(r: redis.asyncio.Redis, *lanes: str) -> bool:
    """Whether every entry read from these lanes of model m was acknowledged."""
    for lane in lanes:
        pending = await r.xpending(keys.ingress_stream("m", lane), keys.SCHEDULER_GROUP)
        if pending["pending"]:
            return False
    return True


async def _has_sent(r: redis.asyncio.Redis, n: int) -> bool:
    return len(await _sent_ids(r, "w1")) >= n


async def _done(r: redis.asyncio.Redis, n: int) -> bool:
    """``n`` requests sent to w1 and every entry of model m's stream acknowledged."""
    return await _has_sent(r, n) and await _pending(r) == 0


async def _pending_is(r: redis.asyncio.Redis, n: int) -> bool:
    return await _pending(r) == n


def _lora(request_id: str) -> QueuedRequest:
    return QueuedRequest(
        id=request_id, model="m", adapter=request_id[0], request={}, origin="api-1"
    )


async def test_an_adapter_waits_for_a_lora_slot_until_the_quantum_ends(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """One worker with one LoRA slot: adapter a opens it; b's requests stay queued (not
    sent to make the engine swap adapters mid-batch) until a has had its quantum
    (adapter_quantum x the worker's mean run time = 0.6 s), then take the slot."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=0.3)
    async with _running(aredis, redis_url, adapter_quantum=2.0) as scheduler:
        await _enqueue(aredis, _lora("a0"))
        await _until(lambda: _has_sent(aredis, 1))
        await _enqueue(aredis, _lora("b0"))
        await _until(lambda: _pending_is(aredis, 1))  # read, and held
        await asyncio.sleep(0.2)  # well inside a's quantum
        assert await _sent_ids(aredis, "w1") == ["a0"]
        # more of a still goes where a is open, within the quantum
        await _enqueue(aredis, _lora("a1"))
        await _until(lambda: _has_sent(aredis, 3))
    assert await _sent_ids(aredis, "w1") == ["a0", "a1", "b0"]
    assert scheduler._residency["w1"].open.keys() == {"b"}
    assert scheduler._residency["w1"].closed.keys() == {"a"}


async def test_a_request_cancelled_while_waiting_for_a_slot_ends_there(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """A request held for a LoRA slot is still checked for cancels: it ends with its one
    terminal event from the scheduler and never reaches the worker."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=1.0)
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.delivery_channel("api-1"))
    messages: list[dict[str, Any]] = []

    async def ended() -> bool:
        m = await pubsub.get_message(timeout=0.1)
        if m is not None and m["type"] == "message":
            # the API process hears of its other request (a0 dispatched) too
            messages.extend(e for e in json.loads(m["data"]) if e["id"] == "b0")
        return bool(messages)

    try:
        async with _running(aredis, redis_url, adapter_quantum=100):
            await _enqueue(aredis, _lora("a0"))
            await _until(lambda: _has_sent(aredis, 1))
            await _enqueue(aredis, _lora("b0"))
            await _until(lambda: _pending_is(aredis, 1))
            await aredis.set(keys.cancelled_key("b0"), 1)
            await _until(ended)
            await _until(lambda: _pending_is(aredis, 0))
    finally:
        await pubsub.aclose()
    assert messages == [{"id": "b0", "seq": -1, "type": "cancelled"}]
    assert await _sent_ids(aredis, "w1") == ["a0"]


async def test_replicas_share_a_workers_lora_slots(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """One worker with one LoRA slot. Replica s0 opens adapter a there; replica s1, which
    never sent anything for a, then reads requests for b: it finds the slot taken in the
    table all replicas share, and holds them for a's quantum."""
    await _register(aredis, "w1", max_loras=1, mean_run_s=1.0)
    async with _running(aredis, redis_url, "s0", adapter_quantum=100):
        await _enqueue(aredis, _lora("a0"), _lora("a1"))
        await _until(lambda: _has_sent(aredis, 2))
    async with _running(aredis, redis_url, "s1", adapter_quantum=100) as other:
        await _enqueue(aredis, _lora("b0"), _lora("b1"))
        await _until(lambda: _pending_is(aredis, 2))  # s1 read them and holds them
        await asyncio.sleep(0.3)
    assert await _sent_ids(aredis, "w1") == ["a0", "a1"]
    assert other._residency["w1"].open.keys() == {"a"}
    assert await aredis.hkeys(keys.open_adapters("w1")) == [b"a"]


SYSTEM_PROMPT = "You answer questions about harbours and their berths. " * 40


def _chat(request_id: str, question: str) -> QueuedRequest:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    return QueuedRequest(id=request_id, model="m", request={"messages": messages})


async def _placed(r: redis.asyncio.Redis, request_id: str, *wids: str) -> str:
    """The worker a request was sent to, once it was."""
    found: list[str] = []

    async def sent() -> bool:
        found[:] = [w for w in wids if request_id in await _sent_ids(r, w)]
        return bool(found)

    await _until(sent)
    return found[0]


async def test_a_shared_system_prompt_goes_where_it_was_sent_by_any_replica(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """Two workers. Replica s0 places a request with a long system prompt. Its worker then
    reports a tenth more load, which alone sends work to the other worker (as replica s3,
    without prefix placement, does). Replica s1, which never placed that prompt, reads the
    shared index and sends the next request with it to the same worker; once that worker
    is loaded out of the band, replica s2 sends the next one to the other."""
    await _register(aredis, "w1", capacity=10)
    await _register(aredis, "w2", capacity=10)
    async with _running(aredis, redis_url, "s0"):
        await _enqueue(aredis, _chat("r0", "Where do ships dock?"))
        first = await _placed(aredis, "r0", "w1", "w2")
    other = "w2" if first == "w1" else "w1"
    await _register(aredis, first, capacity=10, running=1)
    async with _running(aredis, redis_url, "s1"):
        await _enqueue(aredis, _chat("r1", "How long is a berth?"))
        assert await _placed(aredis, "r1", "w1", "w2") == first
        await _enqueue(aredis, _chat("r2", "Who assigns them?"))
        assert await _placed(aredis, "r2", "w1", "w2") == first
    async with _running(aredis, redis_url, "s3", prefix_placement=False):
        await _enqueue(aredis, _chat("r3", "And at night?"))
        assert await _placed(aredis, "r3", "w1", "w2") == other
    await _register(aredis, first, capacity=10, running=4)
    async with _running(aredis, redis_url, "s2"):
        await _enqueue(aredis, _chat("r4", "What about tides?"))
        assert await _placed(aredis, "r4", "w1", "w2") == other


async def test_a_declared_models_requests_wait_for_its_first_worker(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    """No worker at all: an undeclared model's chat ends after no_worker_timeout_s; a
    declared model's chat after cold_start_wait_s, with a 503 its client may retry; its
    job stays queued (no deadline) and goes to the first worker that comes."""
    await Catalog(aredis).put(CatalogModel(name="m"))
    jobs = JobStore(aredis, 3600)
    job = QueuedRequest(id="job0", model="m", request={}, job=True, lane="job")
    await jobs.create(job, tenant="t")
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.delivery_channel("api-1"))
    await _enqueue(
        aredis,
        QueuedRequest(id="chat0", model="m", request={}, origin="api-1"),
        QueuedRequest(id="other0", model="undeclared", request={}, origin="api-1"),
    )
    ended: dict[str, dict[str, Any]] = {}

    async def both_chats_ended() -> bool:
        while (m := await pubsub.get_message(timeout=0.05)) is not None:
            if m["type"] == "message":
                for event in json.loads(m["data"]):
                    ended[event["id"]] = event
        return len(ended) == 2

    async def job_dispatched() -> bool:
        return await aredis.xlen(keys.ingress_stream("m", "job")) == 0

    async with _running(
        aredis, redis_url, no_worker_timeout_s=0.2, cold_start_wait_s=0.5
    ) as scheduler:
        await _until(both_chats_ended, 30)
        assert {e["type"] for e in ended.values()} == {"error"}
        assert ended["chat0"]["status"] == 503
        assert ended["chat0"]["error"]["error"]["code"] == "no_workers"
        # the job waits on, read and held by the scheduler
        assert await aredis.xlen(keys.ingress_stream("m", "job")) == 1
        assert (await jobs.get("job0"))["status"] == "queued"  # type: ignore[index]
        assert scheduler.dispatched_total == 0
        await _register(aredis, "w1")
        await _until(job_dispatched, 30)
    assert [q["id"] for g in await _sent_groups(aredis, "w1") for q in g["requests"]] == ["job0"]
    await pubsub.aclose()
