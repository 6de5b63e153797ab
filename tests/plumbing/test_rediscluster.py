"""The cluster client against a real six-node cluster: keys on every shard, sharded
pub/sub, and a shard's primary killed under it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.plumbing.rediscluster import cluster_client, is_cluster_url, parse_cluster_url
from tests.rediscluster import RedisCluster


def test_cluster_urls_are_taken_apart() -> None:
    target = parse_cluster_url("rediss+cluster://u:p%40ss@a:7000, b ,[::1]:7002")
    assert target.seeds == [("a", 7000), ("b", 6379), ("::1", 7002)]
    assert (target.tls, target.username, target.password) == (True, "u", "p@ss")
    assert is_cluster_url("redis+cluster://a:1") and not is_cluster_url("redis://a:1")
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://a:1/3")
    with pytest.raises(ValueError, match="port must be a number"):
        parse_cluster_url("redis+cluster://a:x")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    running = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_keys_and_sharded_pubsub_across_a_failover(cluster: RedisCluster) -> None:
    async def scenario() -> None:
        client = cluster_client(cluster.url)
        try:
            keys = [f"k{i}" for i in range(50)]
            for key in keys:
                await client.set(key, key)
            owners = {cluster.primary_for(k).port for k in keys}
            assert len(owners) == 3  # the keys landed on every shard

            pubsub = client.pubsub()
            await pubsub.ssubscribe("berth:tokens:{a}")
            await client.spublish("berth:tokens:{a}", "one")
            got = await _next_message(pubsub)
            assert got == b"one"

            victim = cluster.primary_for("berth:tokens:{a}")
            await asyncio.to_thread(cluster.fail_over, victim)
            # the client follows the slot map to the promoted replica
            assert [await client.get(k) for k in keys] == [k.encode() for k in keys]
            # the subscription moves with its slot: publish until one arrives (the
            # resubscribe happens in the background after the move)
            for _ in range(100):
                await client.spublish("berth:tokens:{a}", "two")
                message = await pubsub.get_sharded_message(timeout=0.1)
                if message is not None and message["type"] == "smessage":
                    assert message["data"] == b"two"
                    break
            else:
                raise AssertionError("the sharded subscription did not survive the failover")
            await pubsub.aclose()
        finally:
            await client.aclose()

    asyncio.run(scenario())


async def _next_message(pubsub: object) -> bytes:
    for _ in range(100):
        message = await pubsub.get_sharded_message(timeout=0.1)  # type: ignore[attr-defined]
        if message is not None and message["type"] == "smessage":
            return bytes(message["data"])
    raise AssertionError("no sharded message arrived")
