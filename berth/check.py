"""`berth check ROLE`: exit 0 when the role is healthy, 1 otherwise; for container probes.

The API answers its /health route. A worker and a scheduler prove their loops turn two
ways: ``--local`` reads the proof each refreshes beside itself (plumbing/liveness.py), with
no Redis, which liveness probes use; without it, the record each refreshes with a TTL in
Redis is looked up by its id (a check of the role as the others see it, which fails while
Redis is away).
"""

from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis

from berth.plumbing.liveness import age_s, proof_path
from berth.plumbing.redisconn import sync_redis_client
from berth.protocol import keys


@dataclass(frozen=True)
class LocalCheck:
    """Check a worker's or scheduler's local proof: at ``health_file`` if given, else at
    the default place for the role's id; healthy while younger than ``max_age_s``."""

    health_file: str | None
    max_age_s: float


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


def check_proof(path: Path, max_age_s: float) -> bool:
    age = age_s(path)
    if age is None:
        sys.stderr.write(f"no liveness file at {path} (not started, or stopped)\n")
        return False
    if age > max_age_s:
        sys.stderr.write(f"{path} was last refreshed {age:.0f} s ago (bound {max_age_s:g} s)\n")
        return False
    return True


def run_check(
    role: str,
    *,
    url: str,
    redis_url: str | None,
    role_id: str | None,
    local: LocalCheck | None = None,
) -> int:
    if role == "api":
        healthy = check_api(url)
    elif local is not None:
        if not local.health_file and not role_id:
            sys.stderr.write(
                f"checking a {role} locally needs its id (BERTH_{role.upper()}_ID) or "
                "--health-file\n"
            )
            return 2
        healthy = check_proof(proof_path(role, role_id or "", local.health_file), local.max_age_s)
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
