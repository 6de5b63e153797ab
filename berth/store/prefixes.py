"""The shared prefix index: which prompt-prefix blocks the schedulers sent to each worker.

Approximate, as SGLang's cache-aware router's tree: it holds what was placed on a worker,
not what its engine still caches. Unlike a router's own tree it lives in Redis
(``keys.prefix_index``, one sorted set per worker incarnation), so every scheduler replica
places by the same index and a new replica is warm at once. A worker restarted under its
id is another incarnation, and starts empty.

Each replica keeps a mirror of the index in memory and reads only what changed since its
last read, with its periodic registry refresh: placement itself never waits on Redis. Each
worker's set is bounded to the newest ``max_blocks`` blocks (least recently sent go first,
as an engine's LRU evicts); its memory in Redis is ~82 bytes a block (an 8-byte member
and its score in a sorted set's skiplist and dict; MEMORY USAGE), ~340 KB for 4,096.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.store.scripts import Scripts

_EMPTY: frozenset[bytes] = frozenset()


@dataclass(slots=True)
class _Mirror:
    """One worker incarnation's blocks as this replica knows them: block -> stamp."""

    incarnation: str
    blocks: dict[bytes, float] = field(default_factory=dict)
    # the newest server stamp read: the next read starts there
    read_to: float = 0.0


class PrefixIndex:
    """Every read and write of the prefix index, and this replica's mirror of it."""

    def __init__(self, redis: Redis, max_blocks: int) -> None:
        self.redis = redis
        self.max_blocks = max_blocks
        self._scripts = Scripts(redis)
        self._mirrors: dict[str, _Mirror] = {}

    def cached(self, worker_id: str) -> Container[bytes]:
        """The blocks known sent to the worker (its live incarnation)."""
        mirror = self._mirrors.get(worker_id)
        return mirror.blocks if mirror is not None else _EMPTY

    async def note(
        self, client: Any, worker: WorkerInfo, blocks: Iterable[bytes], now: float
    ) -> None:
        """Prompts with these blocks were sent to ``worker``: into the mirror at once (the
        next placement of this replica sees them) and into Redis through ``client`` (a
        pipeline the caller executes)."""
        unique = list(dict.fromkeys(blocks))
        if not unique:
            return
        mirror = self._mirror(worker)
        for block in unique:
            mirror.blocks[block] = now
        self._trim(mirror)
        await self._scripts["note_prefixes"](
            keys=[keys.prefix_index(worker.id, worker.incarnation)],
            args=[self.max_blocks, keys.PREFIX_INDEX_TTL_S, *unique],
            client=client,
        )

    async def refresh(self, workers: list[WorkerInfo]) -> None:
        """Read, in one round trip, what every replica sent to these workers since the last
        read; forget workers no longer listed and incarnations that were replaced."""
        listed = {w.id for w in workers}
        for worker_id in self._mirrors.keys() - listed:
            del self._mirrors[worker_id]
        if not workers:
            return
        pipe = self.redis.pipeline(transaction=False)
        mirrors = [self._mirror(w) for w in workers]
        for worker, mirror in zip(workers, mirrors, strict=True):
            # inclusive: a write stamped in the microsecond last read is not missed
            pipe.zrangebyscore(
                keys.prefix_index(worker.id, worker.incarnation),
                repr(mirror.read_to),
                "+inf",
                withscores=True,
            )
        for mirror, rows in zip(mirrors, await pipe.execute(), strict=True):
            for block, stamp in rows:
                mirror.blocks[block] = stamp
                mirror.read_to = max(mirror.read_to, stamp)
            self._trim(mirror)

    def _mirror(self, worker: WorkerInfo) -> _Mirror:
        mirror = self._mirrors.get(worker.id)
        if mirror is None or mirror.incarnation != worker.incarnation:
            mirror = self._mirrors[worker.id] = _Mirror(worker.incarnation)
        return mirror

    def _trim(self, mirror: _Mirror) -> None:
        # with slack, so a mirror at its bound is not sorted on every note
        if len(mirror.blocks) > self.max_blocks + self.max_blocks // 8:
            newest = heapq.nlargest(self.max_blocks, mirror.blocks.items(), key=lambda kv: kv[1])
            mirror.blocks = dict(newest)
