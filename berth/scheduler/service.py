"""The scheduler loop: read ingress streams, group, place, dispatch via Celery, acknowledge.

Besides dispatching it keeps the queue honest: requests past their deadline end
as expired, cancelled ones are dropped, jobs whose worker died are queued again
(bounded), and entries held by a dead replica are claimed by a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from celery import Celery
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.limits import limit_scripts, release_queued
from berth.plumbing import tracing
from berth.plumbing.celeryconf import celery_settings
from berth.plumbing.liveness import LivenessFile, keep_fresh, proof_path
from berth.plumbing.models_file import read_models_file
from berth.plumbing.supervise import Backoff, log_failure, supervise
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, WorkerInfo, WorkGroup, event_json
from berth.protocol.errors import BerthError, Timeout, Unavailable, WorkerLost
from berth.protocol.prefix_key import prefix_key
from berth.scheduler import metrics, policy
from berth.scheduler.batches import finalize_batches
from berth.scheduler.publish import TaskPublisher
from berth.scheduler.settings import SchedulerSettings
from berth.store import queue
from berth.store.adapters import AdapterStore, OpenAdapters
from berth.store.catalog import Catalog
from berth.store.jobs import JobStore
from berth.store.prefixes import PrefixIndex
from berth.store.registry import (
    WorkerLiveness,
    announce_scheduler,
    live_workers,
    scheduler_alive,
    withdraw_scheduler,
)
from berth.webhooks.delivery import WebhookDeliverer

log = logging.getLogger(__name__)

# how soon a group that found no worker (or no LoRA slot) is looked at again
_NO_WORKER_RETRY_S = 0.02
# how often a waiting group's requests are checked for cancels and deadlines
_HELD_CHECK_S = 0.5
# group keys whose last read time is kept before the old ones are dropped
_LAST_READ_KEEP = 1024


def _entry_ids(items: list[policy.Pending]) -> dict[str, list[str]]:
    by_stream: dict[str, list[str]] = {}
    for p in items:
        by_stream.setdefault(p.stream, []).append(p.entry_id)
    return by_stream


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("finalising batches failed", exc_info=task.exception())


class Scheduler:
    """One scheduler replica; a consumer in the ingress consumer group of every model."""

    def __init__(self, settings: SchedulerSettings, redis: Redis, celery: Celery) -> None:
        self.settings = settings
        self.redis = redis
        self.celery = celery
        self._publisher = TaskPublisher(celery)
        self.jobs = JobStore(redis, settings.job_ttl_s)
        self._quota_scripts = limit_scripts(redis)
        self._open_adapters = OpenAdapters(redis)
        # where prompt prefixes were sent, shared by every replica (prefix placement)
        self._prefixes = PrefixIndex(redis, settings.prefix_index_blocks)
        self._streams: set[str] = set()
        # the workers judged alive (registry.WorkerLiveness), and their newest records
        self._liveness = WorkerLiveness()
        self._workers: list[WorkerInfo] = []
        # the models the catalog declares: their requests wait for a worker to come
        self._declared: set[str] = set()
        self._catalog = Catalog(redis)
        # the catalog file's models, written to Redis by the first refresh that reaches it
        self._seed = read_models_file(settings.models_file) or None
        self._heartbeats: dict[str, float] = {}
        self._dispatched: dict[str, int] = {}
        # the adapters this replica opened on each worker (LoRA placement)
        self._residency: dict[str, policy.Residency] = {}
        self._groups: dict[policy.GroupKey, policy.PendingGroup] = {}
        # group key -> when a request of it was last read (whether a new group gathers)
        self._last_read: dict[policy.GroupKey, float] = {}
        # (stream, entry id) of every entry read and not yet acknowledged: an entry id is
        # unique only within its stream (two lanes' XADDs in one millisecond share one)
        self._held: set[tuple[str, str]] = set()
        self._refreshed_at = 0.0
        self._maintained_at = 0.0
        self.dispatched_total = 0
        self._turn = 0
        self._finalizing: asyncio.Task[list[str]] | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set. The loop is supervised: when Redis goes away (or
        anything else fails) it logs, backs off with jitter and starts over from what Redis
        holds, so a restart or failover of Redis never ends the scheduler."""
        stop = stop or asyncio.Event()
        backoff = Backoff()
        while not stop.is_set():
            try:
                await self._serve(stop, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = backoff.next_s()
                log_failure(f"scheduler {self.settings.scheduler_id}", err, delay)
                self._start_over()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        if self._finalizing is not None:
            await asyncio.gather(self._finalizing, return_exceptions=True)

    async def close(self) -> None:
        """Let a Celery publish under way end (bounded by kombu's retry policy)."""
        await asyncio.to_thread(self._publisher.close)

    def _start_over(self) -> None:
        """Forget what this replica read but did not dispatch: those entries stay pending
        for it in Redis (or, if Redis lost them, are gone for every reader) and are read
        again from there. The consumer groups are checked again: a Redis restarted
        without its data has none."""
        self._groups.clear()
        self._held.clear()
        self._streams.clear()
        self._refreshed_at = 0.0
        # whatever the last reads found missing may just not have been written again
        self._liveness.reset()

    async def _serve(self, stop: asyncio.Event, backoff: Backoff) -> None:
        await self._refresh()
        await self._read_own_pending()
        backoff.reset()
        while not stop.is_set():
            now = time.monotonic()
            if now - self._refreshed_at >= self.settings.registry_refresh_s:
                await self._refresh()
            if now - self._maintained_at >= self.settings.maintenance_interval_s:
                self._maintained_at = now
                await self._reclaim_from_dead_replicas()
                await self._requeue_orphaned_jobs()
                self._finalize_batches_soon()
            await self._read()
            await self._flush(time.monotonic())

    def _finalize_batches_soon(self) -> None:
        """One finalisation pass at a time, beside the loop: writing a large batch's files
        must not hold up dispatch."""
        if self._finalizing is not None and not self._finalizing.done():
            return
        self._finalizing = asyncio.get_running_loop().create_task(finalize_batches(self.redis))
        self._finalizing.add_done_callback(_log_failure)

    # -- registry and streams -----------------------------------------------------------

    async def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        # proves the loop turns, not just that the process exists
        await announce_scheduler(self.redis, self.settings.scheduler_id)
        started = time.monotonic()
        records = await live_workers(self.redis)
        self._liveness.observe(records, started, time.monotonic())
        workers = self._liveness.present()
        for worker in workers:
            # a fresh heartbeat already counts what we sent before it
            if self._heartbeats.get(worker.id) != worker.heartbeat_at:
                self._heartbeats[worker.id] = worker.heartbeat_at
                self._dispatched.pop(worker.id, None)
            slots = self._residency.get(worker.id)
            if slots is not None:
                slots.forget_drained(worker)
        alive = {w.id for w in workers}
        gone = self._residency.keys() - alive
        for worker_id in gone:
            del self._residency[worker_id]
        if gone:
            await self._open_adapters.forget(list(gone))
        await self._read_open_adapters([w.id for w in workers if w.max_loras])
        if self.settings.prefix_placement:
            await self._prefixes.refresh(workers)
        self._workers = workers
        if self._seed is not None:
            await self._catalog.seed(self._seed)
            self._seed = None
        self._declared = await self._catalog.names()
        models = await AdapterStore(self.redis).known_models() | {w.model for w in workers}
        models |= self._declared
        wanted = {keys.ingress_stream(m, lane) for m in models for lane in keys.LANES}
        for stream in wanted - self._streams:
            await queue.create_group(self.redis, stream)
            self._streams.add(stream)

    async def _read_open_adapters(self, worker_ids: list[str]) -> None:
        """The adapters every replica has opened on these workers."""
        if not worker_ids:
            return
        tables = await self._open_adapters.read(worker_ids)
        for worker_id, table in zip(worker_ids, tables, strict=True):
            self._residency.setdefault(worker_id, policy.Residency()).open = table

    def _wait_s(self) -> tuple[float, bool]:
        """How long to wait for new entries, and whether a group falls due by then."""
        due = policy.next_deadline(self._groups, self.settings.max_group_wait_ms / 1000)
        now = time.monotonic()
        until_refresh = self._refreshed_at + self.settings.registry_refresh_s - now
        if due is None or due - now >= until_refresh:
            return max(0.0, until_refresh), False
        return max(0.0, due - now), True

    async def _read_own_pending(self) -> None:
        """Read again every entry delivered to this replica and not acknowledged, page by
        page: after a start over none of them is held in memory, and a page of ``read_count``
        would leave the rest pending with nobody to read them."""
        after = dict.fromkeys(self._streams, "0")
        me, count = self.settings.scheduler_id, self.settings.read_count
        while after:
            reply = await queue.read(self.redis, me, after, "0", count, None)
            after = {}
            for stream, entries in reply:
                await self._take(stream, entries)
                if len(entries) >= count:
                    after[stream] = entries[-1][0]

    async def _read(self) -> None:
        if not self._streams:
            await asyncio.sleep(self.settings.registry_refresh_s)
            return
        wait_s, group_due = self._wait_s()
        # Redis and Valkey time blocked reads out on their hz tick (100 ms by default), so
        # a BLOCK of a few ms would hold a waiting group for ~100 ms: while a group falls
        # due, read without blocking and sleep here instead
        block = None if group_due else max(1, int(wait_s * 1000))
        reply = await self._xreadgroup(">", block)
        if not reply and group_due and wait_s > 0:
            await asyncio.sleep(wait_s)
            reply = await self._xreadgroup(">", None)
        for stream, entries in reply:
            await self._take(stream, entries)

    async def _xreadgroup(self, start: str, block: int | None) -> queue.Read:
        return await queue.read(
            self.redis,
            self.settings.scheduler_id,
            self._streams,
            start,
            self.settings.read_count,
            block,
        )

    async def _take(self, stream: str, entries: list[queue.Entry]) -> None:
        """Put read (or claimed) entries into their groups, once each."""
        now = time.monotonic()
        items = []
        for entry_id, fields in entries:
            if not fields or (stream, entry_id) in self._held:  # deleted, or already held
                continue
            request = queue.decode_entry(fields)
            if request is None:
                log.error("dropping malformed ingress entry %s on %s", entry_id, stream)
                await self._ack({stream: [entry_id]})
                continue
            self._held.add((stream, entry_id))
            prefix = (
                prefix_key(request.kind, request.request, request.model, request.adapter)
                if self.settings.prefix_placement
                else ()
            )
            items.append(policy.Pending(stream, entry_id, request, now, prefix))
        wait_s = self.settings.max_group_wait_ms / 1000
        if len(self._last_read) > _LAST_READ_KEEP:
            # keys are partly client-named (prompt_cache_key): keep only the recent ones
            self._last_read = {k: t for k, t in self._last_read.items() if now - t < wait_s}
        policy.add_to_groups(self._groups, items, self._last_read, wait_s)

    # -- dispatch -------------------------------------------------------------------------

    async def _flush(self, now: float) -> None:
        wait_s = self.settings.max_group_wait_ms / 1000
        ready = policy.ready_groups(self._groups, now, self.settings.max_group_size, wait_s)
        if not ready:
            return
        for key in policy.dispatch_order(self._groups, ready, now, self.settings.aging_s):
            group = self._groups.pop(key)
            items = group.items
            # a waiting group is checked for cancels and deadlines now and then, not on
            # every retry (workers check both again before they start a request)
            checked = group.checked_at
            if now - checked >= _HELD_CHECK_S:
                items, checked = await self._drop_ended(items), now
            while items:
                worker = await self._place(key, items)
                if worker is None:
                    items = await self._without_worker(key, items, now)
                    break
                room = policy.free_slots(worker, self._dispatched)
                chunk, items = policy.fair_take(items, min(self.settings.max_group_size, room))
                await self._send(key, chunk, worker)
            if items:
                # look again shortly, not on every loop turn; it keeps its age
                waiting = self._groups.setdefault(
                    key, policy.PendingGroup(key=key, first_at=group.first_at)
                )
                waiting.first_at = min(waiting.first_at, group.first_at)
                waiting.not_before = now + _NO_WORKER_RETRY_S
                waiting.checked_at = checked
                waiting.items.extend(items)

    async def _place(self, key: policy.GroupKey, items: list[policy.Pending]) -> WorkerInfo | None:
        model, adapter, lane, affinity, avoid = key
        target = policy.Target(model, adapter, lane, affinity, avoid)
        reserve = self.settings.batch_reserve
        if self.settings.placement == "fcfs":
            self._turn += 1
            return policy.pick_worker_fcfs(
                self._workers, target, self._dispatched, self._turn, batch_reserve=reserve
            )
        if adapter is None:
            self._turn += 1
            prefixes = self.settings.prefix_placement
            return policy.pick_worker(
                self._workers,
                target,
                self._dispatched,
                batch_reserve=reserve,
                turn=self._turn,
                prompts=[p.prefix for p in items if p.prefix] if prefixes else (),
                cached=self._prefixes.cached if prefixes else None,
                band_tenths=self.settings.prefix_band_tenths,
            )
        now = time.time()
        placement = policy.place_adapter(
            self._workers,
            target,
            self._dispatched,
            self._residency,
            now,
            self.settings.adapter_quantum,
            batch_reserve=reserve,
        )
        if placement is None:
            return None
        if placement.opens:
            worker = placement.worker
            slots = self._residency.setdefault(worker.id, policy.Residency())
            closes = placement.closes
            starts = slots.quantum_start(placement, now)
            opened = await self._open_adapters.open(
                worker.id,
                adapter,
                starts,
                closes,
                slots.open.get(closes, 0.0) if closes else 0.0,
                worker.max_loras,
            )
            if not opened:
                # another replica changed the worker's adapters first: look again
                await self._read_open_adapters([worker.id])
                return None
            slots.apply(placement, adapter, now, starts)
            if closes is not None:
                metrics.ADAPTER_SWITCHES.inc()
            log.debug(
                "adapter %s opened on %s (closing %s)",
                adapter,
                placement.worker.id,
                placement.closes,
            )
        return placement.worker

    async def _drop_ended(self, items: list[policy.Pending]) -> list[policy.Pending]:
        """End the requests past their deadline or cancelled; the rest go on."""
        items, expired = policy.split_expired(items, time.time())
        for p in expired:
            await self._end(p, "expired", Timeout("the request expired in the queue"))
        if not items:
            return []
        marks = await queue.cancelled(self.redis, [p.request.id for p in items])
        for p, marked in zip(items, marks, strict=True):
            if marked:
                await self._end(p, "cancelled", None)
        return [p for p, marked in zip(items, marks, strict=True) if not marked]

    async def _without_worker(
        self, key: policy.GroupKey, items: list[policy.Pending], now: float
    ) -> list[policy.Pending]:
        """Items that must wait: all of them while the model's workers are busy; when none
        is alive at all, those that waited longer than ``policy.worker_wait_s`` end with an
        error (a declared model's jobs wait for a worker until their deadline)."""
        model = key[0]
        if any(w.model == model for w in self._workers):
            return items
        declared = model in self._declared
        settings = self.settings
        gone = [
            p
            for p in items
            if now - p.read_at
            >= policy.worker_wait_s(
                p.request, declared, settings.cold_start_wait_s, settings.no_worker_timeout_s
            )
        ]
        message = f"no live worker serves model {model!r}"
        if declared:
            message = f"no worker of model {model!r} started within the cold-start wait; retry"
        for p in gone:
            await self._end(p, "no_worker", Unavailable(message))
        return [p for p in items if p not in gone]

    async def _send(
        self, key: policy.GroupKey, items: list[policy.Pending], worker: WorkerInfo
    ) -> None:
        """One Celery task for the group, then (in one round trip) the jobs' dispatch marks
        or the waiting APIs' dispatched events, and the acknowledgements."""
        model, adapter, lane, _, _ = key
        dispatch = _trace_dispatch(items, worker) if tracing.enabled() else []
        work = WorkGroup(
            model=model,
            adapter=adapter,
            requests=[p.request for p in items],
            incarnation=worker.incarnation,
        )
        # off the loop: while Redis is away kombu retries the publish (publish.py)
        await self._publisher.send(work.model_dump(mode="json"), worker.queue)
        for span in dispatch:
            span.end()
        self._dispatched[worker.id] = self._dispatched.get(worker.id, 0) + len(items)
        sent_at = time.time()
        slots = self._residency.get(worker.id)
        if adapter is not None and slots is not None:
            slots.sent[adapter] = sent_at
        self.dispatched_total += len(items)
        metrics.GROUP_SIZE.observe(len(items))
        metrics.DISPATCHED.labels(model).inc(len(items))
        pipe = self.redis.pipeline(transaction=False)
        for p in items:
            metrics.DISPATCH_LATENCY.observe(sent_at - p.request.enqueued_at)
            if p.request.job:
                await self.jobs.mark_dispatched(
                    p.request.id,
                    p.request.attempt,
                    worker.id,
                    client=pipe,
                    incarnation=worker.incarnation,
                )
            else:
                # the waiting API learns the worker (this incarnation of it), so it notices
                # if that worker dies or restarts
                event = event_json(
                    p.request.id,
                    "dispatched",
                    worker=worker.id,
                    incarnation=worker.incarnation or None,
                )
                queue.notify_waiting(pipe, p.request, event)
        if self.settings.prefix_placement:
            await self._prefixes.note(pipe, worker, (b for p in items for b in p.prefix), sent_at)
        await release_queued(pipe, self._quota_scripts, [p.request for p in items])
        self._ack_into(pipe, _entry_ids(items))
        await pipe.execute()
        log.debug(
            "sent %d requests for %s/%s/%s to %s", len(items), model, adapter, lane, worker.id
        )

    async def _end(self, item: policy.Pending, reason: str, err: BerthError | None) -> None:
        """End a request that will never reach a worker, with its one terminal event."""
        metrics.DROPPED.labels(reason).inc()
        request = item.request
        event = event_json(request.id, "cancelled" if err is None else "error", error=err)
        if request.job:
            status = {"cancelled": "cancelled", "expired": "expired"}.get(reason, "failed")
            body = err.body() if err is not None else None
            await self.jobs.finish(request.id, None, status, error=body, event=event)
        else:
            await queue.notify_waiting(self.redis, request, event)
        await self._ack_items([item])

    async def _ack_items(self, items: list[policy.Pending]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        # the requests leave the queue: their tenants' queue shares free up
        await release_queued(pipe, self._quota_scripts, [p.request for p in items])
        self._ack_into(pipe, _entry_ids(items))
        await pipe.execute()

    async def _ack(self, ids_by_stream: dict[str, list[str]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._ack_into(pipe, ids_by_stream)
        await pipe.execute()

    def _ack_into(self, pipe: Any, ids_by_stream: dict[str, list[str]]) -> None:
        for stream, ids in ids_by_stream.items():
            queue.acknowledge(pipe, stream, ids)
            self._held.difference_update((stream, entry_id) for entry_id in ids)

    # -- recovery -------------------------------------------------------------------------

    async def _reclaim_from_dead_replicas(self) -> None:
        """Claim the unacknowledged entries of replicas that stopped refreshing their record."""
        me = self.settings.scheduler_id
        for stream in self._streams:
            for name, pending in await queue.consumers(self.redis, stream):
                if name == me or await scheduler_alive(self.redis, name):
                    continue
                claimed = await queue.reclaim(self.redis, stream, name, pending, me)
                if pending:
                    log.warning("claimed %d entries of dead scheduler %s", len(claimed), name)
                    await self._take(stream, claimed)

    async def _requeue_orphaned_jobs(self) -> None:
        """Jobs whose worker stopped heartbeating, or was restarted (another incarnation
        under the same id), run again elsewhere, or fail for good."""
        for job_id, attempt, worker, incarnation, payload in await self.jobs.inflight():
            if self._liveness.is_alive(worker, incarnation):
                continue
            queued = QueuedRequest.model_validate_json(payload).model_copy(
                update={"attempt": attempt}
            )
            # a worker that drained and stopped never read the group holding this job (it
            # was on its way): queued again, with no attempt used up and no alarm
            drained = self._liveness.stopped(worker)
            lost = WorkerLost(
                f"worker {worker} died running the job; gave up after "
                f"{self.settings.max_attempts} attempts"
            )
            outcome = await self.jobs.requeue(
                queued,
                worker,
                attempt + 2 if drained else self.settings.max_attempts,
                failure=lost.body(),
                failure_event=event_json(job_id, "error", error=lost),
                requeue_event=event_json(job_id, "requeued", worker=worker),
                dead_incarnation=incarnation,
            )
            if outcome == 1:
                log.log(
                    logging.INFO if drained else logging.WARNING,
                    "job %s: worker %s %s; queued attempt %d",
                    job_id,
                    worker,
                    "stopped before running it" if drained else "died",
                    attempt + 1,
                )
            elif outcome == 2:
                log.error("job %s failed: worker %s died on the last attempt", job_id, worker)


def _trace_dispatch(items: list[policy.Pending], worker: WorkerInfo) -> list[Any]:
    """Each traced request's scheduler spans: its wait in the queue (from its enqueue to this
    replica reading it), its grouping and placement (from then until now) and its dispatch
    (started here, ended once the task is sent). Its envelope then carries the dispatch
    span, the parent of the worker's spans."""
    now_ns, now = time.time_ns(), time.monotonic()
    spans = []
    for p in items:
        parent = tracing.extract(p.request.trace)
        if parent is None:
            continue
        read_ns = now_ns - int((now - p.read_at) * 1e9)
        enqueued_ns = int(p.request.enqueued_at * 1e9)
        tracing.record("queue wait", parent, enqueued_ns, read_ns, {"berth.lane": p.request.lane})
        tracing.record("group and place", parent, read_ns, now_ns, {"berth.worker": worker.id})
        span = tracing.start_span(
            "dispatch", parent, start_ns=now_ns, attributes={"berth.worker": worker.id}
        )
        p.request.trace = tracing.carrier(span)
        spans.append(span)
    return spans


async def serve(settings: SchedulerSettings) -> None:
    """Run one scheduler replica until SIGTERM or SIGINT."""
    redis = settings.redis()
    celery = Celery("berth-scheduler")
    celery.conf.update(celery_settings(settings.require_redis_url()))
    scheduler = Scheduler(settings, redis, celery)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    me = settings.scheduler_id
    proof = LivenessFile(proof_path("scheduler", me, settings.health_file), "scheduler", me)
    # a task on the loop that runs the dispatch loop: fresh while this loop turns, also
    # while the dispatch loop waits out a Redis outage (restarting would not end that)
    keeping = loop.create_task(keep_fresh(proof), name="liveness proof")
    # webhooks go out beside dispatch, on the same loop: their waits are network waits
    deliverer = WebhookDeliverer(settings, redis)
    delivering = loop.create_task(
        supervise("webhook delivery", lambda: deliverer.run(stop)), name="webhooks"
    )
    log.info("scheduler %s started", me)
    try:
        await scheduler.run(stop)
    finally:
        await scheduler.close()
        keeping.cancel()
        stop.set()
        await asyncio.gather(keeping, delivering, return_exceptions=True)
        proof.remove()
        try:
            await withdraw_scheduler(redis, me)
        except RedisError as err:
            log.warning("could not withdraw scheduler %s (%s); its record will expire", me, err)
        await redis.aclose()
        log.info("scheduler %s stopped", settings.scheduler_id)
