"""The worker directory's view of Redis against a real server: one slow registry read is not
an outage (it may be the API's own loop, late under a flood of requests); a second one in a
row is, and a read that answers again ends it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio

from berth.api import directory as directory_module
from berth.api.directory import WorkerDirectory
from berth.plumbing.redisconn import redis_client
from berth.protocol.catalog import CatalogAdapter, CatalogModel
from berth.protocol.errors import InvalidRequest, ModelNotFound, StoreUnavailable, Unavailable
from berth.store.adapters import AdapterStore
from berth.store.catalog import Catalog
from tests.stack import free_port
from tests.valkey import Valkey

# the probe's bound for these tests, and how long the server holds every command: the pause
# outlasts two probes, so each probe made inside it is a slow read
PROBE_S = 0.25
PAUSE_MS = 1000


async def _pause(client: redis.asyncio.Redis) -> None:
    """The server answers nobody until PAUSE_MS have passed (a Redis that is slow, not gone)."""
    await client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")


async def _until_answering(client: redis.asyncio.Redis) -> None:
    # a command sent during the pause is answered when it ends (CLIENT UNPAUSE would wait too)
    await client.ping()


@pytest.fixture
async def directory(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> WorkerDirectory:
    monkeypatch.setattr(directory_module, "REDIS_PROBE_S", PROBE_S)
    directory = WorkerDirectory(aredis, refresh_s=60)
    assert await directory.probe()
    return directory


async def test_one_slow_read_keeps_redis_ready_and_a_second_in_a_row_does_not(
    directory: WorkerDirectory, aredis: redis.asyncio.Redis
) -> None:
    # one slow read: still ready, new requests still accepted
    await _pause(aredis)
    assert await directory.probe()
    assert directory.redis_ok and directory.redis_error == ""
    await _until_answering(aredis)

    # a read that answers in between: the next slow read is again the first of a row
    assert await directory.probe()
    await _pause(aredis)
    assert await directory.probe()
    assert directory.redis_ok

    # the second slow read in a row: Redis counts as away until a read answers
    assert not await directory.probe()
    assert not directory.redis_ok and directory.redis_error
    await _until_answering(aredis)
    assert await directory.probe()
    assert directory.redis_ok and directory.redis_error == ""


async def test_started_before_redis_it_refuses_requests_until_a_read_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on Redis's port yet (an API started first): start returns after its
    bounded read, and the directory counts Redis as away (a 503 for new requests, not a
    404 from an empty model list) until a read answers."""
    monkeypatch.setattr(directory_module, "REDIS_PROBE_S", PROBE_S)
    server = Valkey(tmp_path, free_port())
    client = redis_client(server.url)
    directory = WorkerDirectory(client, refresh_s=60)
    try:
        await directory.start()
        assert not directory.redis_ok and directory.redis_error
        with pytest.raises(StoreUnavailable):
            directory.resolve("fake-model", None)
        await asyncio.to_thread(server.start)
        async with asyncio.timeout(60):
            while not await directory.probe():
                await asyncio.sleep(0.1)
        assert directory.redis_ok and directory.redis_error == ""
    finally:
        await directory.close()
        await client.aclose()
        server.stop()


async def test_a_declared_model_without_a_worker_is_listed_and_queued_when_it_may_wait(
    aredis: redis.asyncio.Redis,
) -> None:
    """The catalog file's models are written by the first read; a declared model no worker
    serves resolves for a request that may wait for its worker, is a 503 for one that may
    not, and is listed with its adapters; an undeclared, unserved model is a 404."""
    seed = [CatalogModel(name="tiny", adapters=(CatalogAdapter(name="a1"),))]
    directory = WorkerDirectory(aredis, refresh_s=60, seed=seed)
    assert await directory.probe()
    assert await Catalog(aredis).names() == {"tiny"}
    assert directory.resolve("tiny", None, may_wait=True) == ("tiny", None)
    assert directory.resolve("tiny", "a1", may_wait=True) == ("tiny", "a1")
    assert directory.resolve("a1", None, may_wait=True) == ("tiny", "a1")
    assert not directory.serves("tiny")
    with pytest.raises(Unavailable, match="no worker serving model 'tiny'"):
        directory.resolve("tiny", None)
    with pytest.raises(InvalidRequest, match="unknown LoRA adapter 'a2'"):
        directory.resolve("tiny", "a2", may_wait=True)
    with pytest.raises(ModelNotFound):
        directory.resolve("other", None, may_wait=True)
    cards = {card["id"]: card for card in directory.model_cards()}
    assert cards["tiny"]["root"] == "tiny"
    assert cards["a1"]["parent"] == "tiny"
    assert set(cards) == {"tiny", "a1"}
    # removed at run time: unavailable (it had a queue's name), no longer listed
    await Catalog(aredis).remove("tiny")
    await AdapterStore(aredis).add_models(aredis, {"tiny"})
    assert await directory.probe()
    with pytest.raises(Unavailable):
        directory.resolve("tiny", None, may_wait=True)
    assert "tiny" not in {card["id"] for card in directory.model_cards()}
