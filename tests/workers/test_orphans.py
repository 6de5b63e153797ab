"""A worker cancels the requests whose API process died, keeps a resumable stream for its
grace from the moment the death was noticed, and lets a resume through a live API keep it;
an API record missing only briefly (Redis just came back) cancels nothing. Real Valkey; the
checker's passes are driven with explicit clock values."""

from __future__ import annotations

import pytest
import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import ResumableStream
from berth.store.registry import announce
from berth.store.streams import StreamStore
from berth.workers.orphans import OriginWatch, gone_owners


def test_gone_owners_needs_a_missing_record_for_the_whole_confirmation() -> None:
    missing: dict[str, float] = {}
    assert gone_owners(missing, {"a": False, "b": True}, 0.0, 6.0) == set()
    assert gone_owners(missing, {"a": False, "b": True}, 5.9, 6.0) == set()
    assert gone_owners(missing, {"a": False, "b": False}, 6.0, 6.0) == {"a"}
    # back before it was judged: starts over; an owner no longer looked at is forgotten
    assert gone_owners(missing, {"b": True}, 20.0, 6.0) == set()
    assert missing == {}


def _watch(
    aredis: redis.asyncio.Redis, running: dict[str, str], cancelled: list[str]
) -> OriginWatch:
    async def cancel(request_id: str) -> None:
        cancelled.append(request_id)
        running.pop(request_id, None)

    return OriginWatch(aredis, lambda: running, cancel, confirm_s=6.0)


async def _resumable(aredis: redis.asyncio.Redis, request_id: str, grace_s: float) -> None:
    record = ResumableStream(tenant="t", model="m", created=0, grace_s=grace_s)
    await StreamStore(aredis).save(request_id, record, 600)


async def test_requests_of_a_dead_api_are_cancelled_resumable_ones_after_the_grace(
    aredis: redis.asyncio.Redis,
) -> None:
    await announce(aredis, keys.APIS_INDEX, "live", keys.api_key("live"), b"1", 60)
    running = {"plain": "dead", "resumable": "dead", "resumed": "dead", "kept": "live"}
    for request_id in ("resumable", "resumed"):
        await _resumable(aredis, request_id, 30)
    cancelled: list[str] = []
    watch = _watch(aredis, running, cancelled)

    await watch.check(0.0)  # the dead API is missing, not yet judged
    assert cancelled == []
    await watch.check(6.0)
    assert cancelled == ["plain"]
    # the resumable streams are detached now, as their API would have done
    assert await aredis.exists(keys.detached_key("resumable"), keys.detached_key("resumed")) == 2

    # a client resumes one through the live API: it lives with that API from now on
    await StreamStore(aredis).attach("resumed", "live", 600)
    await watch.check(35.0)
    assert cancelled == ["plain"]
    await watch.check(36.0)  # the grace (30 s from 6.0) is over
    assert cancelled == ["plain", "resumable"]
    await watch.check(100.0)
    assert cancelled == ["plain", "resumable"]
    assert set(running) == {"resumed", "kept"}


async def test_a_detach_mark_left_by_the_dead_api_is_taken_over(
    aredis: redis.asyncio.Redis,
) -> None:
    # the API saw its client leave, set the mark, and died during the grace
    await _resumable(aredis, "r", 10)
    token = await StreamStore(aredis).detach("r", 10)
    running = {"r": "dead"}
    cancelled: list[str] = []
    watch = _watch(aredis, running, cancelled)
    await watch.check(0.0)
    await watch.check(6.0)
    assert await aredis.get(keys.detached_key("r")) == token.encode()
    await watch.check(16.0)
    assert cancelled == ["r"]


async def test_a_request_ending_during_a_pass_is_no_trouble(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = {"r": "api"}
    cancelled: list[str] = []
    watch = _watch(aredis, running, cancelled)
    owned = StreamStore.owned

    async def owned_then_end(self: StreamStore, ids: list[str]) -> object:
        answer = await owned(self, ids)
        running.clear()  # the request ends while the pass waits on Redis
        return answer

    monkeypatch.setattr(StreamStore, "owned", owned_then_end)
    await watch.check(0.0)
    await watch.check(10.0)
    assert cancelled == []


async def test_an_api_back_within_the_confirmation_keeps_its_requests(
    aredis: redis.asyncio.Redis,
) -> None:
    running = {"r": "api"}
    cancelled: list[str] = []
    watch = _watch(aredis, running, cancelled)
    await watch.check(0.0)  # Redis just returned; the API has not refreshed yet
    await announce(aredis, keys.APIS_INDEX, "api", keys.api_key("api"), b"1", 60)
    await watch.check(3.0)
    await watch.check(30.0)
    assert cancelled == []
