"""Clients for a Redis Cluster (or Valkey cluster), the form berth's token path may be put
on with ``BERTH_EVENTS_REDIS_URL``:

``redis+cluster://[[user]:password@]host1:port1[,host2:port2…]`` (``rediss+cluster://``
for TLS). The hosts are seeds: the client asks them for the slot map and follows it,
including after a shard's replica is promoted. A host without a port listens on 6379.

The same policy as ``redisconn``: a command that fails with a connection error or a
timeout is retried with backoff long enough to ride out a failover (the client refreshes
its slot map between attempts), and TCP keepalive finds half-open connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio.cluster
from redis.asyncio.cluster import ClusterNode

from berth.plumbing.redisconn import (
    DEFAULT_REDIS_CONNECTIONS,
    retry_policy,
    socket_options,
    split_netloc,
)

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379


@dataclass
class ClusterTarget:
    """A ``redis+cluster://`` URL taken apart."""

    seeds: list[tuple[str, int]]
    tls: bool = False
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterTarget:
    """Take a ``redis+cluster://`` URL apart; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    username, password, seeds = split_netloc(parts.netloc, DEFAULT_PORT, url, "cluster")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, got {parts.path!r} in {url!r}")
    return ClusterTarget(
        seeds=seeds,
        tls=parts.scheme.lower() == "rediss+cluster",
        username=username,
        password=password,
    )


def cluster_client(
    url: str, max_connections: int = DEFAULT_REDIS_CONNECTIONS
) -> redis.asyncio.cluster.RedisCluster:
    """The async client for a ``redis+cluster://`` URL, with ``max_connections`` per node."""
    target = parse_cluster_url(url)
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        max_connections=max_connections,
        retry=retry_policy(),
        **socket_options(),
    )
