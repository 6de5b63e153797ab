"""The Redis URL forms and the connection policy (no server needed), plus the plain-URL
client against the test server."""

from __future__ import annotations

import pytest
import redis

from berth.api.delivery.followers import BLOCK_MS as FOLLOWERS_BLOCK_MS
from berth.plumbing.celeryconf import celery_settings
from berth.plumbing.redisconn import (
    SOCKET_TIMEOUT_S,
    BlockingSentinelConnectionPool,
    parse_sentinel_url,
    redis_client,
    sync_redis_client,
)
from berth.scheduler.settings import SchedulerSettings


def test_sentinel_url_is_taken_apart() -> None:
    target = parse_sentinel_url("redis+sentinel://:s3cr%40t@h1:26380,h2,[::1]:26381/mymaster/2")
    assert target.sentinels == [("h1", 26380), ("h2", 26379), ("::1", 26381)]
    assert target.master == "mymaster"
    assert target.db == 2
    assert target.username is None
    assert target.password == "s3cr@t"
    assert target.sentinel_password == "s3cr@t"


def test_sentinel_password_can_differ_or_be_none() -> None:
    url = "redis+sentinel://app:pw@h1:1/m?sentinel_password=other"
    target = parse_sentinel_url(url)
    assert (target.username, target.password, target.sentinel_password) == ("app", "pw", "other")
    assert target.db == 0
    assert (
        parse_sentinel_url("redis+sentinel://:pw@h1:1/m?sentinel_password=").sentinel_password
        is None
    )


def test_rediss_sentinel_url_carries_tls_options() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://:pw@h1:1/m/0?ssl_ca_certs=/etc/ca.crt&ssl_certfile=/c.crt"
        "&ssl_keyfile=/c.key&sentinel_password=s"
    )
    assert target.tls == {
        "ssl_ca_certs": "/etc/ca.crt",
        "ssl_certfile": "/c.crt",
        "ssl_keyfile": "/c.key",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": False,
    }
    assert (target.password, target.sentinel_password, target.options) == ("pw", "s", {})
    assert parse_sentinel_url("redis+sentinel://h1:1/m").tls is None


def test_celery_speaks_tls_to_sentinels_and_primary() -> None:
    conf = celery_settings("rediss+sentinel://:pw@h1:1/m/0?ssl_ca_certs=/ca.crt")
    assert conf["broker_url"] == "sentinel://:pw@h1:1/0"
    tls = {"ssl_ca_certs": "/ca.crt", "ssl_cert_reqs": "required", "ssl_check_hostname": False}
    assert conf["broker_use_ssl"] == tls
    sentinels = conf["broker_transport_options"]["sentinel_kwargs"]
    assert sentinels["ssl"] is True and sentinels["ssl_ca_certs"] == "/ca.crt"
    assert "broker_use_ssl" not in celery_settings("redis+sentinel://h1:1/m")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss+sentinel://h1:1/m?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required"),
        ("rediss+sentinel://h1:1/m?ssl_check_hostname=yes", "ssl_check_hostname must be true"),
        ("redis+sentinel://h1:1", "must end in /master_name"),
        ("redis+sentinel://h1:1/m/0/x", "must end in /master_name"),
        ("redis+sentinel://h1:x/m", "sentinel port must be a number"),
        ("redis+sentinel://h1:1/m/zero", "database must be a number"),
        ("redis+sentinel://:1/m", "empty sentinel host"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_celery_uses_kombus_sentinel_transport() -> None:
    conf = celery_settings("redis+sentinel://:pw@h1:26380,h2:26381/mymaster/3")
    assert conf["broker_url"] == "sentinel://:pw@h1:26380/3;sentinel://:pw@h2:26381/3"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "pw"
    assert options["visibility_timeout"] == 3600
    assert conf["broker_connection_max_retries"] is None


def test_celery_keeps_a_plain_url() -> None:
    conf = celery_settings("redis://h:6379/1")
    assert conf["broker_url"] == "redis://h:6379/1"
    assert "master_name" not in conf["broker_transport_options"]
    assert conf["broker_transport_options"]["health_check_interval"] > 0


def test_socket_timeout_outlasts_every_blocking_read() -> None:
    # a blocking read longer than the socket timeout would end in a TimeoutError
    assert FOLLOWERS_BLOCK_MS / 1000 < SOCKET_TIMEOUT_S
    # the scheduler's XREADGROUP blocks at most until its next registry refresh
    assert SchedulerSettings(redis_url="redis://x").registry_refresh_s < SOCKET_TIMEOUT_S


async def test_plain_client_keeps_the_blocking_pool(redis_url: str) -> None:
    client = redis_client(redis_url, max_connections=4)
    try:
        pool = client.connection_pool
        assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
        assert pool.connection_kwargs["health_check_interval"] > 0
        assert pool.connection_kwargs["socket_keepalive"] is True
        assert pool.connection_kwargs["retry"].get_retries() > 0
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
    sync = sync_redis_client(redis_url)
    try:
        assert sync.get("k") == b"v"
    finally:
        sync.close()


async def test_connections_still_name_the_library(redis_url: str) -> None:
    """The driver's name and version are read once for every connection, not per
    connection; the server still hears them (CLIENT SETINFO)."""
    client = redis_client(redis_url, max_connections=4)
    sync = sync_redis_client(redis_url)
    try:
        for info in (await client.client_info(), sync.client_info()):
            assert info["lib-name"] == "redis-py"
            assert info["lib-ver"] == redis.__version__
    finally:
        await client.aclose()
        sync.close()


async def test_sentinel_client_pool_waits_for_a_free_connection() -> None:
    client = redis_client("redis+sentinel://h1:1/m", max_connections=4)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelConnectionPool)
        assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
        assert pool.max_connections == 4
        assert pool.timeout is not None and pool.timeout > 0
    finally:
        await client.aclose()
