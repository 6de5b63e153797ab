"""`berth check ROLE`: exit 0 when the role is healthy, 1 otherwise; for container probes.

The API answers its /health route; a worker and a scheduler prove their loops
turn by refreshing a record with a TTL in Redis, looked up by their id.
"""

from __future__ import annotations

import sys
import urllib.request

import redis

from berth.plumbing.redisconn import sync_redis_client
from berth.protocol import keys


def check_api(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def check_record(redis_url: str, key: str) -> bool:
    # a probe answers within its own timeout: one quick retry, not a failover's worth
    try:
        client = sync_redis_client(redis_url, retries=1, timeout_s=5)
    except ValueError as err:  # a malformed URL
        sys.stderr.write(f"{err}\n")
        return False
    try:
        return bool(client.exists(key))
    except redis.RedisError:
        return False
    finally:
        client.close()


def run_check(role: str, *, url: str, redis_url: str | None, role_id: str | None) -> int:
    if role == "api":
        healthy = check_api(url)
    else:
        if not redis_url or not role_id:
            sys.stderr.write(
                f"checking a {role} needs REDIS_URL and its id (BERTH_{role.upper()}_ID)\n"
            )
            return 2
        key = keys.worker_key(role_id) if role == "worker" else keys.scheduler_key(role_id)
        healthy = check_record(redis_url, key)
    sys.stdout.write(f"{role} {'healthy' if healthy else 'unhealthy'}\n")
    return 0 if healthy else 1
