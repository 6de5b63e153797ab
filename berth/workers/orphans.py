"""Requests whose API process died: nobody holds their client's connection any more, so a
worker cancels them instead of running them to the end for nobody. A resumable stream (its
client asked, ``X-Berth-Resumable``) is kept for its resume grace from the moment its API
was found dead, and cancelled after it unless a client resumed it through another API.

Which process holds a request: the ``origin`` API instance in its queued envelope, or the
one that resumed it last (``keys.stream_owner``). An instance is dead when its liveness
record (``api/presence.py``) stayed missing for ``keys.API_ALIVE_S`` of this loop's
successful passes: right after Redis returns, every record may be missing until its API's
next refresh, and that must cancel nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import ValidationError
from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import ResumableStream
from berth.store.registry import apis_alive
from berth.store.streams import StreamStore

log = logging.getLogger(__name__)


def gone_owners(
    missing_since: dict[str, float], alive: dict[str, bool], now: float, confirm_s: float
) -> set[str]:
    """Update ``missing_since`` (owner -> when first seen without a record) with this pass's
    view and return the owners missing for ``confirm_s`` or longer. Owners not looked at
    this pass are forgotten."""
    for owner in list(missing_since):
        if owner not in alive:
            del missing_since[owner]
    for owner, is_alive in alive.items():
        if is_alive:
            missing_since.pop(owner, None)
        else:
            missing_since.setdefault(owner, now)
    return {o for o, since in missing_since.items() if now - since >= confirm_s}


@dataclass
class OriginWatch:
    """Checks, every ``every_s``, the API processes holding this worker's running requests.

    ``running`` gives request id -> origin instance of the interactive requests running
    here; ``cancel`` ends one (cancel mark, engine abort)."""

    redis: Redis
    running: Callable[[], dict[str, str]]
    cancel: Callable[[str], Awaitable[None]]
    every_s: float = 2.0
    confirm_s: float = keys.API_ALIVE_S
    _missing: dict[str, float] = field(default_factory=dict)
    # resumable request id -> (detached token, when its grace ends)
    _kept: dict[str, tuple[str, float]] = field(default_factory=dict)

    async def run(self) -> None:
        """Runs supervised: a pass that failed (Redis away) starts the confirmation over."""
        self._missing.clear()
        while True:
            await self.check(time.monotonic())
            await asyncio.sleep(self.every_s)

    async def check(self, now: float) -> None:
        # a copy: requests end while this pass waits on Redis
        running = dict(self.running())
        for request_id in list(self._kept):
            if request_id not in running:
                del self._kept[request_id]
        if not running:
            self._missing.clear()
            return
        ids = sorted(running)
        streams = StreamStore(self.redis)
        held = await streams.owned(ids)
        owners = {rid: owner or running[rid] for rid, (owner, _) in zip(ids, held, strict=True)}
        distinct = sorted(set(owners.values()))
        alive = dict(zip(distinct, await apis_alive(self.redis, distinct), strict=True))
        gone = gone_owners(self._missing, alive, now, self.confirm_s)
        for request_id, (_, raw) in zip(ids, held, strict=True):
            if owners[request_id] not in gone:
                self._kept.pop(request_id, None)
                continue
            record = _record(raw)
            if record is None or record.grace_s <= 0:
                log.info(
                    "request %s: its API process %s is gone; cancelling",
                    request_id,
                    owners[request_id],
                )
                await self.cancel(request_id)
                continue
            kept = self._kept.get(request_id)
            if kept is None:
                token = await streams.adopt(request_id, record.grace_s)
                self._kept[request_id] = (token, now + record.grace_s)
                log.info(
                    "request %s: its API process %s is gone; resumable for %.0fs",
                    request_id,
                    owners[request_id],
                    record.grace_s,
                )
            elif now >= kept[1]:
                del self._kept[request_id]
                if await streams.end_if_detached(request_id, kept[0]):
                    log.info("request %s: not resumed within its grace; cancelling", request_id)
                    await self.cancel(request_id)


def _record(raw: bytes | None) -> ResumableStream | None:
    if raw is None:
        return None
    try:
        return ResumableStream.model_validate_json(raw)
    except ValidationError:
        return None
