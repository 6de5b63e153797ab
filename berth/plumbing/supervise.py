"""Supervised loops: a loop that talks to Redis (or Celery's broker) logs a failure, backs
off with jitter and runs again; a connection error is never fatal to a role."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# backoff between runs of a failed loop: 0.2 s doubling to 5 s, each wait drawn at random
# below it (full jitter), so the replicas of a role do not return to Redis in step
BASE_S = 0.2
CAP_S = 5.0
# a loop that ran this long before failing starts its backoff over
RESET_AFTER_S = 30.0


class Backoff:
    """Exponential backoff with full jitter; ``reset`` once the loop ran well again."""

    def __init__(self, base_s: float = BASE_S, cap_s: float = CAP_S) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next_s(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def is_connection_error(err: BaseException) -> bool:
    """A lost or refused connection (Redis, or kombu's broker): expected while a server
    restarts or fails over, logged without a stack trace."""
    if isinstance(err, RedisConnectionError | RedisTimeoutError | ConnectionError | OSError):
        return True
    # kombu wraps the transport's errors in its OperationalError
    return type(err).__name__ == "OperationalError"


def log_failure(what: str, err: BaseException, delay_s: float) -> None:
    if is_connection_error(err):
        log.warning("%s lost its connection (%s); again in %.1f s", what, err, delay_s)
    else:
        log.error("%s failed; again in %.1f s", what, delay_s, exc_info=err)


async def supervise(what: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` until it returns; whenever it raises, log, back off and run it again.
    Cancelling the supervising task stops it."""
    backoff = Backoff()
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if loop.time() - started > RESET_AFTER_S:
                backoff.reset()
            delay = backoff.next_s()
            log_failure(what, err, delay)
            await asyncio.sleep(delay)
