"""The scheduler loop: read ingress streams, group, place, dispatch via Celery, acknowledge."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from typing import Any

from celery import Celery
from prometheus_client import start_http_server
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from berth.protocol import keys
from berth.protocol.celeryconf import RUN_GROUP_TASK, celery_settings
from berth.protocol.envelopes import QueuedRequest, WorkerInfo, WorkGroup
from berth.protocol.errors import BerthError, Unavailable
from berth.registry import live_workers
from berth.scheduler import metrics, policy
from berth.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

# how soon a group that found no worker with room is looked at again
_NO_WORKER_RETRY_S = 0.05
# a scheduler whose loop stalls this long counts as dead to `berth check scheduler`
_ALIVE_TTL_MS = 10_000


def terminal_event(request_id: str, type_: str, err: BerthError | None = None) -> str:
    """A terminal event for a request that never reached a worker (seq 0: it is the only one)."""
    event: dict[str, Any] = {"id": request_id, "seq": 0, "type": type_}
    if err is not None:
        event["error"], event["status"] = err.body(), err.status_code
    return json.dumps(event)


class Scheduler:
    """One scheduler replica; a consumer in the ingress consumer group of every model."""

    def __init__(self, settings: SchedulerSettings, redis: Redis, celery: Celery) -> None:
        self.settings = settings
        self.redis = redis
        self.celery = celery
        self._streams: set[str] = set()
        self._workers: list[WorkerInfo] = []
        self._heartbeats: dict[str, float] = {}
        self._dispatched: dict[str, int] = {}
        self._groups: dict[policy.GroupKey, policy.PendingGroup] = {}
        self._refreshed_at = 0.0
        self.dispatched_total = 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self._refresh()
        await self._read(own_pending=True)
        while not stop.is_set():
            now = time.monotonic()
            if now - self._refreshed_at >= self.settings.registry_refresh_s:
                await self._refresh()
            await self._read(own_pending=False)
            await self._flush(time.monotonic())

    async def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        # proves the loop turns, not just that the process exists
        await self.redis.set(keys.scheduler_key(self.settings.scheduler_id), b"1", px=_ALIVE_TTL_MS)
        workers = await live_workers(self.redis)
        for worker in workers:
            # a fresh heartbeat already counts what we sent before it
            if self._heartbeats.get(worker.id) != worker.heartbeat_at:
                self._heartbeats[worker.id] = worker.heartbeat_at
                self._dispatched.pop(worker.id, None)
        self._workers = workers
        members: Any = await self.redis.smembers(keys.MODELS_SET)
        models = {m.decode() for m in members}
        models |= {w.model for w in workers}
        for stream in {keys.ingress_stream(m) for m in models} - self._streams:
            try:
                # id 0: entries queued before any scheduler existed are read too
                await self.redis.xgroup_create(stream, keys.SCHEDULER_GROUP, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
            self._streams.add(stream)

    def _block_ms(self) -> int:
        due = policy.next_deadline(self._groups, self.settings.max_group_wait_ms / 1000)
        until_refresh = self._refreshed_at + self.settings.registry_refresh_s - time.monotonic()
        wait = until_refresh if due is None else min(due - time.monotonic(), until_refresh)
        return max(1, int(wait * 1000))

    async def _read(self, own_pending: bool) -> None:
        if not self._streams:
            await asyncio.sleep(self.settings.registry_refresh_s)
            return
        start = "0" if own_pending else ">"
        # redis-py types replies loosely; with bytes responses this is [(stream, [(id, fields)])]
        reply: Any = await self.redis.xreadgroup(
            keys.SCHEDULER_GROUP,
            self.settings.scheduler_id,
            {s: start for s in self._streams},
            count=self.settings.read_count,
            block=None if own_pending else self._block_ms(),
        )
        now = time.monotonic()
        items = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if not fields:  # deleted while pending
                    continue
                try:
                    request = QueuedRequest.model_validate_json(fields[b"r"])
                except (ValidationError, KeyError):
                    log.error("dropping malformed ingress entry %s on %s", entry_id, stream)
                    await self._ack(stream.decode(), [entry_id.decode()])
                    continue
                items.append(policy.Pending(stream.decode(), entry_id.decode(), request, now))
        policy.add_to_groups(self._groups, items)

    async def _flush(self, now: float) -> None:
        for key in policy.ready_groups(
            self._groups, now, self.settings.max_group_size, self.settings.max_group_wait_ms / 1000
        ):
            group = self._groups.pop(key)
            for chunk_start in range(0, len(group.items), self.settings.max_group_size):
                chunk = group.items[chunk_start : chunk_start + self.settings.max_group_size]
                leftover = await self._dispatch(key, chunk, now)
                if leftover:
                    # look again shortly, not on every loop turn
                    retry_at = now - self.settings.max_group_wait_ms / 1000 + _NO_WORKER_RETRY_S
                    self._groups.setdefault(
                        key, policy.PendingGroup(key=key, first_at=retry_at)
                    ).items.extend(leftover)

    async def _dispatch(
        self, key: policy.GroupKey, items: list[policy.Pending], now: float
    ) -> list[policy.Pending]:
        """Send one group to a worker; returns the items that must wait for one."""
        model, adapter = key
        marks = await self.redis.mget([keys.cancelled_key(p.request.id) for p in items])
        live = [p for p, mark in zip(items, marks, strict=True) if mark is None]
        dropped = [p for p, mark in zip(items, marks, strict=True) if mark is not None]
        metrics.DROPPED.labels("cancelled").inc(len(dropped))
        for p in dropped:
            await self.redis.publish(
                keys.token_channel(p.request.id), terminal_event(p.request.id, "cancelled")
            )
        await self._ack_items(dropped)
        if not live:
            return []
        worker = policy.pick_worker(self._workers, model, adapter, self._dispatched)
        if worker is None:
            expired = [p for p in live if now - p.read_at >= self.settings.no_worker_timeout_s]
            for p in expired:
                err = Unavailable(f"no live worker serves model {model!r}; try again later")
                await self.redis.publish(
                    keys.token_channel(p.request.id), terminal_event(p.request.id, "error", err)
                )
            metrics.DROPPED.labels("no_worker").inc(len(expired))
            await self._ack_items(expired)
            return [p for p in live if p not in expired]
        work = WorkGroup(model=model, adapter=adapter, requests=[p.request for p in live])
        # kombu's publish is a quick blocking write to Redis
        self.celery.send_task(
            RUN_GROUP_TASK, args=[work.model_dump(mode="json")], queue=worker.queue
        )
        self._dispatched[worker.id] = self._dispatched.get(worker.id, 0) + len(live)
        self.dispatched_total += len(live)
        sent_at = time.time()
        metrics.GROUP_SIZE.observe(len(live))
        metrics.DISPATCHED.labels(model).inc(len(live))
        for p in live:
            metrics.DISPATCH_LATENCY.observe(sent_at - p.request.enqueued_at)
        log.debug("sent %d requests for %s/%s to %s", len(live), model, adapter, worker.id)
        await self._ack_items(live)
        return []

    async def _ack_items(self, items: list[policy.Pending]) -> None:
        by_stream: dict[str, list[str]] = {}
        for p in items:
            by_stream.setdefault(p.stream, []).append(p.entry_id)
        for stream, ids in by_stream.items():
            await self._ack(stream, ids)

    async def _ack(self, stream: str, ids: list[str]) -> None:
        # acknowledged entries are deleted too, so XLEN is the queue length the API bounds
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, keys.SCHEDULER_GROUP, *ids)
        pipe.xdel(stream, *ids)
        await pipe.execute()


async def serve(settings: SchedulerSettings) -> None:
    """Run one scheduler replica until cancelled or SIGTERM."""
    redis = Redis.from_url(settings.require_redis_url())
    celery = Celery("berth-scheduler")
    celery.conf.update(celery_settings(settings.require_redis_url()))
    scheduler = Scheduler(settings, redis, celery)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info("scheduler %s started", settings.scheduler_id)
    try:
        await scheduler.run(stop)
    finally:
        await redis.aclose()
        log.info("scheduler %s stopped", settings.scheduler_id)
