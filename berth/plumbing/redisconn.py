"""Every Redis client berth builds comes from here: one place for the URL forms, the
retry and timeout policy, and Sentinel.

Two URL forms are understood wherever berth takes a REDIS_URL:

- ``redis://[[user]:password@]host:port[/db]`` (and ``rediss://``, ``unix://``): one server,
  as redis-py reads it;
- ``redis+sentinel://[[user]:password@]host1:port1,host2:port2/master_name[/db]``: a
  Sentinel-managed primary. The sentinels are asked where ``master_name`` lives on every
  connect, including the reconnect inside a command's retry, so a failover is followed as
  soon as the sentinels name the new primary. The password is the primary's; sentinels get
  the same one unless ``?sentinel_password=...`` names another (``?sentinel_password=`` for
  none). A sentinel without a port listens on 26379.
- ``rediss+sentinel://...`` (the same form): TLS to the sentinels and to the primary, as a
  Redis whose sentinels and servers listen on ``tls-port`` serves it. The certificate
  options ride in the query, with redis-py's names: ``ssl_ca_certs`` (the CA file that
  signed the servers' certificates), ``ssl_certfile`` and ``ssl_keyfile`` (this client's,
  where the servers ask for one), ``ssl_cert_reqs`` (``required`` by default; ``optional``,
  ``none``) and ``ssl_check_hostname`` (``false`` by default: sentinels name the primary
  by address).

The policy: a command that fails with a connection error or a timeout is retried with
exponential backoff and jitter for long enough to ride out a Sentinel failover; idle
connections are pinged before use and TCP keepalive finds half-open ones; the socket
timeout is far above the longest blocking read berth issues (pub/sub ``listen()`` waits
without it), so only a dead server trips it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError, TimeoutError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
# the TLS options a rediss+sentinel:// URL's query may carry (redis-py's names)
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_CONNECTIONS = 256

# how long a command waits for a free connection when all of a process's are busy
POOL_WAIT_S = 30.0
# the longest blocking read berth issues is a 5 s XREAD of job events (api/jobs.py) and
# the scheduler's XREADGROUP, bounded by its registry refresh; pub/sub listen() is exempt
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
# idle connections are PINGed before reuse after this long
HEALTH_CHECK_INTERVAL_S = 10
# backoff 0.1 s doubling to 2 s, with jitter; 12 retries wait up to ~18 s in all, longer
# than a Sentinel failover takes with down-after-milliseconds of 5 s
RETRY_BASE_S = 0.1
RETRY_CAP_S = 2.0
RETRIES = 12
# the name and version every connection sends with CLIENT SETINFO, read once: left to
# redis-py, each new connection looks its version up in the installed packages' metadata
# (~0.3 ms of the event loop each, many of them while a burst grows a pool)
_DRIVER_INFO = DriverInfo()


def _keepalive_options() -> dict[int, int]:
    """Probe an idle connection after 10 s, every 5 s, give up after 3 misses (Linux)."""
    options: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return options


def retry_policy(retries: int = RETRIES) -> redis.asyncio.retry.Retry:
    """The async clients' retry: exponential backoff with jitter, on connection errors and
    timeouts. A retried write may run twice if the first reached the server before the
    connection dropped; berth's writes are idempotent or tolerate that (see item 6)."""
    return redis.asyncio.retry.Retry(
        ExponentialWithJitterBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S),
        retries,
        supported_errors=(ConnectionError, TimeoutError),
    )


def sync_retry_policy(retries: int = RETRIES) -> redis.retry.Retry:
    return redis.retry.Retry(
        ExponentialWithJitterBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S),
        retries,
        supported_errors=(ConnectionError, TimeoutError),
    )


def socket_options() -> dict[str, Any]:
    """Socket settings shared by every connection, to servers and to sentinels."""
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "driver_info": _DRIVER_INFO,
    }


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL taken apart."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    # rediss+sentinel://: TLS to the sentinels and the primary, with these redis-py options
    tls: dict[str, Any] | None = None


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME)


def _tls_options(query: dict[str, str], url: str) -> dict[str, Any]:
    """A rediss+sentinel:// URL's TLS options, for redis-py's SSL connections."""
    tls: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": False}
    for name in TLS_OPTIONS:
        if name in query:
            tls[name] = query.pop(name)
    if tls["ssl_cert_reqs"] not in ("required", "optional", "none"):
        raise ValueError(
            f"ssl_cert_reqs must be required, optional or none, got {tls['ssl_cert_reqs']!r} "
            f"in {url!r}"
        )
    check = str(tls["ssl_check_hostname"]).lower()
    if check not in ("true", "false"):
        raise ValueError(f"ssl_check_hostname must be true or false, got {check!r} in {url!r}")
    tls["ssl_check_hostname"] = check == "true"
    return tls


def split_netloc(
    netloc: str, default_port: int, url: str, what: str
) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """(username, password, [(host, port), …]) of a URL naming several hosts
    (``user:password@h1:p1,h2``; ``what`` they are, for errors); ValueError names what is
    wrong in ``url``."""
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    found = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise ValueError(f"URL names an empty {what} host: {url!r}")
        try:
            found.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"{what} port must be a number, got {port!r} in {url!r}") from None
    return username, password, found


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Take a ``redis+sentinel://`` URL apart; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// or {SENTINEL_TLS_SCHEME}:// URL: {url!r}")
    username, password, sentinels = split_netloc(
        parts.netloc, DEFAULT_SENTINEL_PORT, url, "sentinel"
    )
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(
            f"{SENTINEL_SCHEME} URL must end in /master_name or /master_name/db, got {url!r}"
        )
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"database must be a number, got {path[1]!r} in {url!r}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    sentinel_password = query.pop("sentinel_password", password)
    tls = _tls_options(query, url) if parts.scheme.lower() == SENTINEL_TLS_SCHEME else None
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password or None,
        options=query,
        tls=tls,
    )


def _sentinel_kwargs(target: SentinelTarget) -> dict[str, Any]:
    """How berth talks to the sentinels themselves: short timeouts, so a dead sentinel is
    skipped quickly for the next one."""
    kwargs: dict[str, Any] = {
        "socket_timeout": CONNECT_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
    }
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    if target.tls is not None:
        kwargs |= {"ssl": True, **target.tls}
    return kwargs


# redis-py's Sentinel-managed connections ask the sentinels where the primary is only when
# a connection is taken from the pool (``connect``). A command that was in flight when the
# primary died reconnects inside its own retry through ``connect_check_health``, which dials
# the address the connection had: the dead primary, for the whole retry budget (about 18 s),
# long after the sentinels named the new one. These classes ask on every connect, and dial
# once per attempt: the command's retry backs off between attempts and asks again.


class SentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """An async connection to a Sentinel-managed primary that asks the sentinels where the
    primary is on every (re)connect."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=False)

    async def _connect_retry(self) -> None:
        if not self.connection_pool.is_master:
            return await super()._connect_retry()  # type: ignore[no-any-return]
        # redis-py's asks the sentinels, then connects through connect_check_health
        await self.connect_check_health(check_health=self.connection_pool.check_connection)


class SyncSentinelConnection(redis.sentinel.SentinelManagedConnection):
    """The synchronous twin of SentinelConnection (sync clients, and kombu's Sentinel
    transport: ``workers/broker.py``)."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)

    def _connect_retry(self) -> None:
        if not self.connection_pool.is_master:
            return super()._connect_retry()  # type: ignore[no-any-return]
        self.connect_check_health(check_health=self.connection_pool.check_connection)


class SentinelSSLConnection(
    SentinelConnection, redis.asyncio.sentinel.SentinelManagedSSLConnection
):
    """SentinelConnection over TLS (rediss+sentinel://)."""


class SyncSentinelSSLConnection(
    SyncSentinelConnection, redis.sentinel.SentinelManagedSSLConnection
):
    """SyncSentinelConnection over TLS (rediss+sentinel://; kombu's too)."""


class BlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A Sentinel-managed pool that, like BlockingConnectionPool, waits for a free
    connection instead of failing when all are busy."""


def redis_client(
    url: str,
    max_connections: int = DEFAULT_REDIS_CONNECTIONS,
    *,
    retries: int = RETRIES,
    socket_timeout: float | None = SOCKET_TIMEOUT_S,
) -> redis.asyncio.Redis:
    """The async client for ``url``. Its pool waits for a free connection instead of failing
    when all are busy, so a burst queues for a moment rather than ending in errors; after a
    failover the same client reaches the new primary. ``socket_timeout`` None: reads have no
    timer of their own (for a caller that bounds a whole pipeline itself)."""
    options = socket_options() | {"retry": retry_policy(retries), "socket_timeout": socket_timeout}
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(
            target.sentinels, sentinel_kwargs=_sentinel_kwargs(target)
        )
        client: redis.asyncio.Redis = sentinel.master_for(
            target.master,
            connection_pool_class=BlockingSentinelConnectionPool,
            connection_class=SentinelConnection if target.tls is None else SentinelSSLConnection,
            max_connections=max_connections,
            timeout=POOL_WAIT_S,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
            **(target.tls or {}),
        )
        return client
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT_S, **options
    )
    return redis.asyncio.Redis.from_pool(pool)


def sync_redis_client(
    url: str, *, retries: int = RETRIES, timeout_s: float = SOCKET_TIMEOUT_S
) -> redis.Redis:
    """A synchronous client for ``url`` (probes, scripts), with the same policy; a probe
    passes a short ``timeout_s`` and few ``retries``."""
    options = socket_options() | {"retry": sync_retry_policy(retries), "socket_timeout": timeout_s}
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(
            target.sentinels, sentinel_kwargs=_sentinel_kwargs(target)
        )
        client: redis.Redis = sentinel.master_for(
            target.master,
            connection_class=(
                SyncSentinelConnection if target.tls is None else SyncSentinelSSLConnection
            ),
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
            **(target.tls or {}),
        )
        return client
    return redis.Redis.from_url(url, **options)


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options that go with it: kombu's ``sentinel://``
    transport (one URL per sentinel, joined by ``;``, plus ``master_name``) for a
    ``redis+sentinel://`` URL, the URL as it is otherwise. For ``rediss+sentinel://`` the
    sentinels are asked over TLS (``sentinel_kwargs``) and Celery's ``broker_use_ssl``
    (``celery_broker_tls``) makes the connections to the primary TLS ones."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry_on_timeout": True,
    }
    if not is_sentinel_url(url):
        return url, options
    target = parse_sentinel_url(url)
    auth = ""
    if target.username or target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    broker = ";".join(
        f"sentinel://{auth}{_host(host)}:{port}/{target.db}" for host, port in target.sentinels
    )
    options["master_name"] = target.master
    options["sentinel_kwargs"] = _sentinel_kwargs(target)
    return broker, options


def celery_broker_tls(url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss+sentinel://`` URL; None for any other."""
    if not is_sentinel_url(url):
        return None
    return parse_sentinel_url(url).tls


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
