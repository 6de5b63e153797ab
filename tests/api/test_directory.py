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
from berth.protocol.errors import StoreUnavailable
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
