"""Batches against a real server: creation queues every line as a batch-lane job, progress
is counted once, cancel and expiry end the live jobs, and finalisation writes the output and
error files once, in input order, however many replicas race."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from berth.protocol import keys
from berth.protocol.limits import RequestLimits
from berth.scheduler import batches as finaliser
from berth.scheduler.batches import finalize_batches
from berth.store.batches import BatchStore
from berth.store.files import FileStore, new_file_id
from berth.store.jobs import JobStore

TTL = 600


def _line(i: int, model: str = "m") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": str(i)}]}
    item = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps({**item, "body": body}).encode()


async def _upload(aredis: redis.asyncio.Redis, lines: list[bytes], tenant: str = "t") -> str:
    """A batch input file stored as an upload stores it."""
    files = FileStore(aredis, TTL)
    file_id = new_file_id()
    await files.append(file_id, lines)
    await files.commit(file_id, tenant, "in.jsonl", "batch", sum(len(x) + 1 for x in lines))
    return file_id


async def _create(
    aredis: redis.asyncio.Redis,
    n: int,
    *,
    window_s: float = 3600,
    tenant: str = "t",
    window: int | None = None,
) -> tuple[BatchStore, dict[str, Any]]:
    store = BatchStore(aredis, TTL)
    now = time.time()
    file_id = await _upload(aredis, [_line(i) for i in range(n)], tenant)
    batch = await store.create(
        tenant,
        input_file_id=file_id,
        total=n,
        resolved={("m", None): ("m", None)},
        limits=RequestLimits(),
        window=window or n,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        created_at=now,
        expires_at=now + window_s,
        metadata={"k": "v"},
    )
    return store, batch


def _completion(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "object": "chat.completion", "choices": [], "model": "m"}


async def _job_ids(store: BatchStore, batch_id: str) -> list[str]:
    return await store.job_ids(batch_id, 0, 1 << 30)


async def _finish_all(aredis: redis.asyncio.Redis, ids: list[str]) -> None:
    """Every job succeeds, as workers would report it (pipelined, for speed)."""
    jobs = JobStore(aredis, TTL)
    for start in range(0, len(ids), 1000):
        pipe = aredis.pipeline(transaction=False)
        for job_id in ids[start : start + 1000]:
            script, script_keys, args = jobs.finish_call(
                job_id, None, "succeeded", result=_completion(job_id)
            )
            await script(keys=script_keys, args=args, client=pipe)
        await pipe.execute()


async def _content(aredis: redis.asyncio.Redis, file_id: str) -> list[dict[str, Any]]:
    raw = await FileStore(aredis, TTL).read_all(file_id, "t")
    assert raw is not None and raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


async def test_create_queues_every_line_as_a_batch_job(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 2500)
    assert batch["status"] == "in_progress" and batch["in_progress_at"]
    assert batch["request_counts"] == {"total": 2500, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"k": "v"} and batch["model"] == "m"
    assert batch["id"].startswith("batch_") and len(batch["id"]) == 6 + 32
    assert await aredis.xlen(keys.ingress_stream("m", "batch")) == 2500
    assert await aredis.xlen(keys.ingress_stream("m")) == 0  # never the interactive lane
    assert await aredis.sismember(keys.MODELS_SET, "m")
    assert await aredis.sismember(keys.BATCHES_ACTIVE, batch["id"])
    ids = await _job_ids(store, batch["id"])
    job = await JobStore(aredis, TTL).get(ids[1234], "t")
    assert job is not None and job["status"] == "queued"
    assert (job["batch_id"], job["custom_id"]) == (batch["id"], "req-1234")
    assert await store.get(batch["id"], "another-tenant") is None


async def test_finalise_writes_output_and_errors_in_input_order(
    aredis: redis.asyncio.Redis,
) -> None:
    store, batch = await _create(aredis, 30)
    ids = await _job_ids(store, batch["id"])
    jobs = JobStore(aredis, TTL)
    # finish out of order, one failure in the middle
    for i in reversed(range(30)):
        if i == 7:
            error = {"error": {"message": "boom", "type": "server_error", "code": "engine_error"}}
            await jobs.finish(ids[i], None, "failed", error=error)
        else:
            await jobs.finish(ids[i], None, "succeeded", result=_completion(ids[i]))
    assert await finalize_batches(aredis) == [batch["id"]]
    done = await store.get(batch["id"], "t")
    assert done is not None and done["status"] == "completed" and done["completed_at"]
    assert done["request_counts"] == {"total": 30, "completed": 29, "failed": 1}
    assert not await aredis.sismember(keys.BATCHES_ACTIVE, batch["id"])

    output = await _content(aredis, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(30) if i != 7]
    first = output[0]
    assert first["error"] is None and first["id"] == ids[0]
    assert first["response"] == {
        "status_code": 200,
        "request_id": ids[0],
        "body": _completion(ids[0]),
    }
    (failed,) = await _content(aredis, done["error_file_id"])
    assert failed["custom_id"] == "req-7" and failed["response"]["status_code"] == 500
    assert failed["error"] == {"code": "engine_error", "message": "boom"}
    output_file = await FileStore(aredis, TTL).get(done["output_file_id"], "t")
    assert output_file is not None and output_file["purpose"] == "batch_output"
    assert await finalize_batches(aredis) == []  # once


async def test_counts_follow_progress_and_wait_for_the_last_job(
    aredis: redis.asyncio.Redis,
) -> None:
    store, batch = await _create(aredis, 10)
    ids = await _job_ids(store, batch["id"])
    await _finish_all(aredis, ids[1:])  # the first is still running
    assert await finalize_batches(aredis) == []
    counted = await store.get(batch["id"], "t")
    assert counted is not None and counted["status"] == "in_progress"
    assert counted["request_counts"] == {"total": 10, "completed": 9, "failed": 0}
    await _finish_all(aredis, ids[:1])
    assert await finalize_batches(aredis) == [batch["id"]]
    done = await store.get(batch["id"], "t")
    assert done is not None and done["request_counts"]["completed"] == 10
    assert done["error_file_id"] is None


async def test_racing_finalisers_finalise_once(redis_url: str, aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 200)
    await _finish_all(aredis, await _job_ids(store, batch["id"]))
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(finalize_batches(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    # the scan is recorded by one of them per step; run until the batch is done
    while not any(results):
        results = [await finalize_batches(aredis)]
    assert sum(len(r) for r in results) == 1
    files, _ = await FileStore(aredis, TTL).list_files(
        "t", after=None, limit=100, purpose="batch_output"
    )
    assert len(files) == 1
    done = await store.get(batch["id"], "t")
    assert done is not None and done["request_counts"]["completed"] == 200


async def test_a_dead_finalisers_claim_is_taken_over(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 3)
    await _finish_all(aredis, await _job_ids(store, batch["id"]))
    assert await store.claim(batch["id"], "dead", finaliser.STALE_CLAIM_S)
    held = await store.get(batch["id"], "t")
    assert held is not None and held["status"] == "finalizing" and held["finalizing_at"]
    assert await finalize_batches(aredis) == []  # held, and not for long yet
    stale = time.time() - finaliser.STALE_CLAIM_S - 1
    await aredis.hset(keys.batch_key(batch["id"]), "lock_at", stale)
    assert await finalize_batches(aredis) == [batch["id"]]
    # the presumed-dead holder wakes up: its outcome is not recorded
    assert await store.commit(batch["id"], "dead", "completed", ttl_s=TTL) is None
    assert not await store.claim(batch["id"], "late", stale_s=0)  # final: nobody claims it


async def test_cancel_ends_live_jobs_then_the_batch(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 6)
    ids = await _job_ids(store, batch["id"])
    await _finish_all(aredis, ids[:2])
    await JobStore(aredis, TTL).claim(ids[2], 0, "w1")  # running
    assert await store.cancel(batch["id"]) == "in_progress"
    cancelling = await store.get(batch["id"], "t")
    assert cancelling is not None and cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"]
    job = await JobStore(aredis, TTL).get(ids[4])
    assert job is not None and job["status"] == "cancelled"
    assert await aredis.exists(keys.cancelled_key(ids[3]))  # the scheduler drops it
    assert await store.cancel(batch["id"]) == "cancelling"  # idempotent

    assert await finalize_batches(aredis) == [batch["id"]]
    done = await store.get(batch["id"], "t")
    assert done is not None and done["status"] == "cancelled" and done["cancelled_at"]
    assert done["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
    assert [line["custom_id"] for line in await _content(aredis, done["output_file_id"])] == [
        "req-0",
        "req-1",
    ]
    errors = await _content(aredis, done["error_file_id"])
    assert [line["custom_id"] for line in errors] == ["req-2", "req-3", "req-4", "req-5"]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    assert await store.cancel(batch["id"]) == "cancelled"


async def test_expiry_ends_what_is_left_and_the_batch(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 4, window_s=0.5)
    ids = await _job_ids(store, batch["id"])
    await _finish_all(aredis, ids[:1])
    await asyncio.sleep(0.6)
    assert await finalize_batches(aredis) == []  # ends the live jobs as expired
    job = await JobStore(aredis, TTL).get(ids[3])
    assert job is not None and job["status"] == "expired"
    assert await finalize_batches(aredis) == [batch["id"]]
    done = await store.get(batch["id"], "t")
    assert done is not None and done["status"] == "expired" and done["expired_at"]
    errors = await _content(aredis, done["error_file_id"])
    assert [line["error"]["code"] for line in errors] == ["batch_expired"] * 3


async def test_an_interrupted_creation_fails_the_batch(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 5)
    # as if the API died after queueing two jobs, long ago
    await aredis.ltrim(keys.batch_jobs(batch["id"]), 0, 1)
    await aredis.hset(keys.batch_key(batch["id"]), mapping={"status": "validating"})
    assert await finalize_batches(aredis) == []  # a creation may still be running
    old = time.time() - finaliser.STALE_CREATION_S - 1
    await aredis.hset(keys.batch_key(batch["id"]), "created_at", old)
    assert await finalize_batches(aredis) == [batch["id"]]
    failed = await store.get(batch["id"], "t")
    assert failed is not None and failed["status"] == "failed" and failed["failed_at"]
    assert failed["errors"]["data"][0]["code"] == "batch_creation_interrupted"
    ids = await _job_ids(store, batch["id"])
    job = await JobStore(aredis, TTL).get(ids[0])
    assert job is not None and job["status"] == "cancelled"


async def test_a_batch_whose_record_expired_leaves_the_active_set(
    aredis: redis.asyncio.Redis,
) -> None:
    await aredis.sadd(keys.BATCHES_ACTIVE, "batch_gone")
    assert await finalize_batches(aredis) == []
    assert not await aredis.sismember(keys.BATCHES_ACTIVE, "batch_gone")


async def test_list_pages_newest_first_per_tenant(aredis: redis.asyncio.Redis) -> None:
    made = [(await _create(aredis, 1))[1]["id"] for _ in range(5)]
    await _create(aredis, 1, tenant="other")
    store = BatchStore(aredis, TTL)
    page, more = await store.list_batches("t", after=None, limit=3)
    assert [b["id"] for b in page] == made[::-1][:3] and more
    page, more = await store.list_batches("t", after=page[-1]["id"], limit=3)
    assert [b["id"] for b in page] == made[::-1][3:] and not more


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the client's round trips to the server (a pipeline is one), calling through."""
    count = [0]
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        await send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return count


async def test_a_large_batch_costs_round_trips_per_chunk_not_per_job(
    aredis: redis.asyncio.Redis, round_trips: list[int]
) -> None:
    # OpenAI's largest batch is 50,000 lines; what matters is that creating and finalising
    # take a few round trips per chunk of jobs, never one (or more) per job
    n = 5000
    round_trips[0] = 0
    store, batch = await _create(aredis, n)
    created = round_trips[0]
    await _finish_all(aredis, await _job_ids(store, batch["id"]))
    round_trips[0] = 0
    while not await finalize_batches(aredis):
        pass
    finalised = round_trips[0]
    done = await store.get(batch["id"], "t")
    assert done is not None and done["request_counts"]["completed"] == n
    assert created < n / 20 and finalised < n / 20, (created, finalised)


async def test_a_batch_runs_a_window_of_its_lines_at_a_time(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 25, window=10)
    assert batch["status"] == "in_progress"
    assert batch["request_counts"] == {"total": 25, "completed": 0, "failed": 0}
    ids = await _job_ids(store, batch["id"])
    assert len(ids) == 10 and await aredis.xlen(keys.ingress_stream("m", "batch")) == 10
    seen = list(ids)
    while True:
        await _finish_all(aredis, ids)
        if await finalize_batches(aredis):
            break
        listed = await _job_ids(store, batch["id"])
        ids = listed[len(seen) :]
        assert 0 < len(ids) <= 10  # never more than the window live
        seen += ids
    assert len(seen) == 25
    done = await store.get(batch["id"], "t")
    assert done is not None and done["status"] == "completed"
    assert done["request_counts"] == {"total": 25, "completed": 25, "failed": 0}
    output = await _content(aredis, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(25)]
    # an ended job keeps its result, not its request: the file holds that already
    assert not await aredis.hexists(keys.job_key(seen[0]), "payload")
    assert await aredis.hexists(keys.job_key(seen[0]), "result")


async def test_cancel_reports_the_lines_never_started(aredis: redis.asyncio.Redis) -> None:
    store, batch = await _create(aredis, 6, window=2)
    ids = await _job_ids(store, batch["id"])
    await _finish_all(aredis, ids[:1])
    assert await store.cancel(batch["id"]) == "in_progress"
    # the cancel ended the live job; the lines never fed are counted with it
    assert await finalize_batches(aredis) == [batch["id"]]
    assert len(await _job_ids(store, batch["id"])) == 2  # nothing fed after the cancel
    done = await store.get(batch["id"], "t")
    assert done is not None and done["status"] == "cancelled"
    assert done["request_counts"] == {"total": 6, "completed": 1, "failed": 0}
    errors = await _content(aredis, done["error_file_id"])
    assert [line["custom_id"] for line in errors] == [f"req-{i}" for i in range(1, 6)]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert len({line["id"] for line in errors}) == 5


async def test_an_input_file_deleted_mid_batch_keeps_its_lines_until_the_end(
    aredis: redis.asyncio.Redis,
) -> None:
    store, batch = await _create(aredis, 4, window=2)
    files = FileStore(aredis, TTL)
    assert await files.delete(batch["input_file_id"], "t")
    assert await files.get(batch["input_file_id"], "t") is None
    for _ in range(3):
        await _finish_all(aredis, await _job_ids(store, batch["id"]))
        if await finalize_batches(aredis):
            break
    done = await store.get(batch["id"], "t")
    assert done is not None and done["request_counts"]["completed"] == 4
    assert not await aredis.exists(keys.file_content_key(batch["input_file_id"]))
