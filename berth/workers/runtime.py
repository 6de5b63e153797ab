"""The engine host: one event loop thread that owns the engine and serves every group.

Celery runs tasks on its own threads; each task hands its group to this loop
and waits, so every group feeds the same engine and it batches across them.
Each request's events are numbered and written by its ``RequestEvents`` (``events.py``).

Given SIGTERM (``drain``), the host takes no new work: it says so in its heartbeat (every
scheduler then skips it), hands back at once what has not started, lets what runs finish
for ``drain_s``, and then hands back the rest. An interactive request is handed back to the
API process waiting for it (a ``requeued`` event, numbered as the stream goes on), which
queues it again to continue after its last token (``protocol/continuation.py``); a job goes
back to its queue to run again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.plumbing import logcontext
from berth.plumbing.eventloop import new_loop
from berth.plumbing.liveness import LivenessFile, proof_path
from berth.plumbing.models_file import read_models_file
from berth.plumbing.redisconn import redis_client
from berth.plumbing.supervise import Backoff, log_failure, supervise
from berth.protocol import keys
from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.completion import CompletionRequest, parse_completion_request
from berth.protocol.envelopes import QueuedRequest, WorkerInfo, WorkGroup, event_json
from berth.protocol.errors import BerthError, EngineFailure, Timeout
from berth.protocol.limits import ADMITTED
from berth.store import queue
from berth.store.adapters import AdapterStore
from berth.store.catalog import Catalog
from berth.store.jobs import JobStore
from berth.workers import metrics
from berth.workers.engine.base import Engine, EngineStep
from berth.workers.events import RequestEvents
from berth.workers.heartbeat import heartbeat_loop, retire
from berth.workers.orphans import OriginWatch
from berth.workers.publisher import EventPublisher
from berth.workers.settings import WorkerSettings
from berth.workers.tracespans import RequestTrace

log = logging.getLogger(__name__)

# how long a cancel for a request this worker has not seen yet is remembered
_CANCEL_MEMORY_S = 120.0
# weight of each finished request in the mean run time the heartbeat reports
_MEAN_WEIGHT = 0.02


class EngineHost:
    """Runs the engine, the event publisher, the cancel listener and the heartbeat."""

    def __init__(self, engine: Engine, settings: WorkerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = settings.worker_id
        # this process start: a restart under the same worker id is another incarnation
        self.incarnation = uuid.uuid4().hex
        self.capacity = settings.capacity
        self._loop = new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-loop", daemon=True
        )
        self._active: set[str] = set()
        # running interactive request id -> the API instance holding its client
        self._origins: dict[str, str] = {}
        self._adapter_running: Counter[str] = Counter()
        self._mean_run_s: float | None = None
        self._cancels: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Redis | None = None
        self._events_redis: Redis | None = None
        self._publisher: EventPublisher | None = None
        self._jobs: JobStore | None = None
        self._started_at = time.time()
        # the catalog file is read now: a malformed one stops the start
        self._catalog = read_models_file(settings.models_file)
        # set by drain() (SIGTERM): no new work, the rest finished or handed back
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        # running requests that produced a step here (handing one back continues it)
        self._producing: set[str] = set()
        # requests aborted to be handed back, not cancelled
        self._handing_back: set[str] = set()
        self._beat_now: asyncio.Event | None = None
        # written once the engine started, by the heartbeat loop: the worker's probes
        self.proof = LivenessFile(
            proof_path("worker", self.worker_id, settings.health_file), "worker", self.worker_id
        )

    # -- lifecycle (called from the worker's main thread) --------------------------------

    def start(self) -> None:
        # until the engine runs, no proof: the probes say "not started" rather than what
        # an earlier process under this id left behind
        self.proof.remove()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._startup(), self._loop).result()

    def stop(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
        except Exception:
            log.exception("engine host shutdown failed")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def drain(self) -> None:
        """Begin the drain (SIGTERM; called from any thread, returns at once): Celery's warm
        shutdown stops taking groups and waits for the running ones, which end within
        ``drain_s`` (finished or handed back)."""
        if self._draining or not self._thread.is_alive():
            return
        self._draining = True
        asyncio.run_coroutine_threadsafe(self._start_drain(), self._loop)

    def run_group(self, group: dict[str, Any]) -> None:
        """Serve one group; blocks the calling (Celery) thread until every request ended."""
        work = WorkGroup.model_validate(group)
        if work.incarnation is not None and work.incarnation != self.incarnation:
            log.warning(
                "dropping a group of %d sent to an earlier incarnation of worker %s; "
                "its requests are queued again by those waiting for them",
                len(work.requests),
                self.worker_id,
            )
            return
        asyncio.run_coroutine_threadsafe(self._run_group(work), self._loop).result()

    def info(self) -> WorkerInfo:
        in_engine = self.engine.num_running()
        stats = self.engine.stats()
        metrics.RUNNING.set(in_engine)
        metrics.WAITING.set(max(0, len(self._active) - in_engine))
        return WorkerInfo(
            id=self.worker_id,
            model=self.engine.model,
            aliases=self.settings.served_names()[1:],
            adapters=self.engine.adapters,
            capacity=self.capacity,
            running=len(self._active),
            engine_running=in_engine,
            waiting=max(0, len(self._active) - in_engine) + stats.waiting,
            loaded_adapters=stats.loaded_adapters,
            max_loras=stats.max_loras,
            adapter_running=dict(self._adapter_running),
            mean_run_s=self._mean_run_s,
            kv_cache_usage=stats.kv_cache_usage,
            queue=keys.worker_queue(self.worker_id),
            started_at=self._started_at,
            incarnation=self.incarnation,
            draining=self._draining,
        )

    # -- inside the loop --------------------------------------------------------------------

    async def _startup(self) -> None:
        self._redis = self.settings.redis()
        await self.engine.start()
        # the publisher's own client: its reads carry no per-reply timer (publisher.py)
        self._events_redis = redis_client(self.settings.require_redis_url(), 4, socket_timeout=None)
        self._publisher = EventPublisher(self._events_redis)
        self._publisher.start()
        self._jobs = JobStore(self._redis, self.settings.job_ttl_s)
        self._beat_now = asyncio.Event()
        loop = asyncio.get_running_loop()
        # each loop that talks to Redis is supervised: Redis going away never ends one
        for name, run in (
            ("announcing the model", self._register_model),
            ("the cancel listener", self._listen_for_cancels),
            ("following the adapter registry", self._follow_adapter_registry),
            ("watching the API processes of running requests", self._watch_origins().run),
        ):
            self._tasks.append(loop.create_task(supervise(name, run), name=name))
        self._tasks.append(
            loop.create_task(
                heartbeat_loop(
                    self._redis,
                    self.info,
                    self.settings.heartbeat_interval,
                    self.settings.heartbeat_ttl,
                    self.proof,
                    self._beat_now,
                ),
                name="heartbeat",
            )
        )
        log.info(
            "worker %s (incarnation %s) serves %s (capacity %d)",
            self.worker_id,
            self.incarnation,
            self.engine.model,
            self.capacity,
        )

    def _watch_origins(self) -> OriginWatch:
        assert self._redis is not None
        return OriginWatch(
            self._redis, lambda: self._origins, self._cancel_orphan, self.settings.origin_check_s
        )

    async def _cancel_orphan(self, request_id: str) -> None:
        """Cancel a request whose API process died, as its client's disconnect would have."""
        assert self._redis is not None
        await queue.cancel(self._redis, request_id)
        metrics.ORPHANS_CANCELLED.inc()
        await self._cancel(request_id)

    async def _register_model(self) -> None:
        """Make the model and its configured adapters known for good: once this worker is
        gone, requests for them are unavailable (503), not unknown (404)."""
        assert self._redis is not None
        await AdapterStore(self._redis).announce(self.engine.model, self.engine.adapters)
        if self._catalog:
            await Catalog(self._redis).seed(self._catalog)

    async def _shutdown(self) -> None:
        assert self._redis is not None and self._publisher is not None
        if self._drain_task is not None:
            self._tasks.append(self._drain_task)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.proof.remove()
        # its last record says it stopped: gone at once for every reader, and not lost
        last = self.info()
        last.ttl_s = self.settings.heartbeat_ttl
        await retire(self._redis, last)
        await self._publisher.close()
        await self.engine.shutdown()
        await self._redis.aclose()
        if self._events_redis is not None:
            await self._events_redis.aclose()

    async def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="drain")

    async def _drain(self) -> None:
        """Hand back what has not started, give the rest ``drain_s`` to finish, then hand
        back what still runs."""
        metrics.DRAINING.set(1)
        if self._beat_now is not None:
            self._beat_now.set()  # the schedulers learn of it now, not a beat later
        log.info(
            "worker %s draining: %d requests held, %.0f s to finish them",
            self.worker_id,
            len(self._active),
            self.settings.drain_s,
        )
        for request_id in list(self._active - self._producing):
            await self._hand_back(request_id)
        await asyncio.sleep(self.settings.drain_s)
        if self._active:
            log.warning(
                "drain time is up with %d requests running; handing them back to continue "
                "elsewhere",
                len(self._active),
            )
        for request_id in list(self._active):
            await self._hand_back(request_id)

    async def _hand_back(self, request_id: str) -> None:
        """Abort a request to hand it back (``_serve`` sees its abort, or aborts it at its
        next step if it was not yet inside the engine)."""
        if request_id in self._handing_back:
            return
        self._handing_back.add(request_id)
        try:
            await self.engine.abort(request_id)
        except Exception:
            # the drain goes on: its step aborts it, or the worker's exit ends it
            log.exception("aborting request %s to hand it back failed", request_id)

    async def _give_back(
        self, queued: QueuedRequest, events: RequestEvents, tokens: int, produced: bool
    ) -> None:
        """A request this worker will not finish, handed back: an interactive one to the API
        process waiting for it (``requeued`` with the next seq and the tokens generated: it
        queues the request again, to continue); a job to its queue, to run again."""
        metrics.HANDED_BACK.labels("yes" if produced else "no").inc()
        if not queued.job:
            events.emit("requeued", tokens=tokens)
            return
        jobs = self._jobs
        assert jobs is not None
        requeued = event_json(queued.id, "requeued", worker=self.worker_id)
        # a hand-back is no failure: it never uses up the job's attempts
        await self._until_done(
            f"handing back job {queued.id}",
            lambda: jobs.requeue(
                queued,
                self.worker_id,
                queued.attempt + 2,
                failure={},
                failure_event="",
                requeue_event=requeued,
                dead_incarnation=self.incarnation,
            ),
        )

    async def _follow_adapter_registry(self) -> None:
        """Adapters registered through the admin API become servable here within a beat."""
        assert self._redis is not None
        registry = AdapterStore(self._redis)
        # runs supervised: a failed read backs off and starts over
        while True:
            self.engine.set_registered_adapters(await registry.paths_for(self.engine.model))
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _listen_for_cancels(self) -> None:
        """Abort cancelled requests. Runs supervised: when the connection drops, a new
        subscription is made and the cancel marks of the requests running here are read,
        for the cancels published while nobody listened."""
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(keys.CANCEL_CHANNEL)
            await self._cancel_marked()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await self._cancel(message["data"].decode())
        finally:
            await pubsub.aclose()

    async def _cancel_marked(self) -> None:
        assert self._redis is not None
        active = sorted(self._active)
        if not active:
            return
        marks = await queue.cancelled(self._redis, active)
        for request_id, marked in zip(active, marks, strict=True):
            if marked:
                await self._cancel(request_id)

    async def _cancel(self, request_id: str) -> None:
        now = time.time()
        self._cancels[request_id] = now
        if request_id in self._active:
            log.info("request %s cancelled; aborting", request_id)
            await self.engine.abort(request_id)
        if len(self._cancels) > 10_000:
            self._cancels = {k: t for k, t in self._cancels.items() if now - t < _CANCEL_MEMORY_S}

    async def _until_done(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis operation the work cannot go on without, as often as it takes: while
        Redis is away the request waits here (its Celery thread with it), then goes on."""
        backoff = Backoff()
        while True:
            try:
                return await op()
            except RedisError as err:
                delay = backoff.next_s()
                log_failure(what, err, delay)
                await asyncio.sleep(delay)

    async def _run_group(self, group: WorkGroup) -> None:
        assert self._redis is not None
        # one round trip: which requests were cancelled, and the run markers of the
        # interactive ones (a job is claimed through its record in _serve)
        try:
            marks, claims = await queue.start_runs(self._redis, group.requests, self.worker_id)
        except RedisError as err:
            # the cancel listener catches up on the marks once Redis is back; with no
            # marker to set, serving is the side that loses no request
            log.warning("reading cancel marks failed (%s); serving the group", err)
            marks = [False] * len(group.requests)
            claims = [True] * len(group.requests)
        await asyncio.gather(
            *(
                self._serve(q, marked, claimed)
                for q, marked, claimed in zip(group.requests, marks, claims, strict=True)
            )
        )

    async def _serve(self, queued: QueuedRequest, cancelled: bool, claimed: bool) -> None:
        """Serve one request; ``claimed``: its run marker was set here (interactive)."""
        assert self._publisher is not None and self._jobs is not None
        # a task of its own (gather): the ids stay on this request's log lines
        logcontext.bind(**{"job_id" if queued.job else "request_id": queued.id})
        if not claimed:
            # a second delivery of the same attempt (a scheduler died before acking it)
            log.warning(
                "request %s attempt %d already ran or runs; skipping", queued.id, queued.attempt
            )
            return
        jobs = self._jobs
        if self._draining:
            # sent before every scheduler saw the drain: back to the queue, untouched
            events = RequestEvents(self._publisher, queued, self.worker_id, jobs, self.incarnation)
            await self._give_back(queued, events, _done_tokens(queued), produced=False)
            return
        if queued.job and not await self._until_done(
            f"claiming job {queued.id}",
            lambda: jobs.claim(queued.id, queued.attempt, self.worker_id, self.incarnation),
        ):
            log.info("job %s attempt %d is no longer queued; skipping", queued.id, queued.attempt)
            return
        events = RequestEvents(self._publisher, queued, self.worker_id, jobs, self.incarnation)
        events.emit("started")
        if cancelled or queued.id in self._cancels:
            events.emit("cancelled")
            return
        if queued.deadline is not None and time.time() > queued.deadline:
            events.error(Timeout(f"request {queued.id} expired in the queue before it started"))
            return
        self._active.add(queued.id)
        if queued.origin is not None and not queued.job:
            self._origins[queued.id] = queued.origin
        first_output: float | None = None
        if queued.adapter is not None:
            self._adapter_running[queued.adapter] += 1
            metrics.ADAPTER_REQUESTS.labels(queued.adapter).inc()
        finished = handed_back = False
        done_before = _done_tokens(queued)
        tokens = done_before
        traced = RequestTrace.start(queued, self.worker_id) if queued.trace else None
        try:
            request = _parsed(queued)
            if isinstance(request, ChatCompletionRequest):
                events.collect_result(request)
            if traced is not None:
                traced.generating()
            steps = self.engine.generate(queued.id, request, queued.adapter, lane=queued.lane)
            async for step in steps:
                if done_before:
                    _count_continued(step, done_before)
                tokens = max(tokens, step.completion_tokens)
                if first_output is None:
                    first_output = time.monotonic()
                    self._producing.add(queued.id)
                    if traced is not None:
                        traced.first_step(step)
                    if queued.id in self._handing_back and not step.finished:
                        # handed back before it was inside the engine: abort it now
                        await self.engine.abort(queued.id)
                if not step.finished:
                    events.step(step)
                    continue
                finished = True
                aborted = any(c.finish_reason == "abort" for c in step.choices)
                if aborted and queued.id in self._handing_back and queued.id not in self._cancels:
                    finished, handed_back = False, True
                    if any(c.content or c.reasoning_content or c.tool_calls for c in step.choices):
                        events.step(_without_ending(step))
                    await self._give_back(queued, events, tokens, first_output is not None)
                    break
                events.step(step, "cancelled" if aborted else "finished")
            if not finished and not handed_back:
                if queued.id in self._cancels:
                    events.emit("cancelled")
                else:
                    events.error(EngineFailure("the engine ended the request without a result"))
        except BerthError as err:
            events.error(err)
        except Exception:
            log.exception("request %s failed in the engine", queued.id)
            events.error(EngineFailure("the engine failed while serving the request"))
        finally:
            if traced is not None:
                traced.end("finished" if finished else "ended")
            self._active.discard(queued.id)
            self._producing.discard(queued.id)
            self._handing_back.discard(queued.id)
            self._origins.pop(queued.id, None)
            ran = time.monotonic() - first_output if finished and first_output else None
            self._ended(queued.adapter, ran)

    def _ended(self, adapter: str | None, ran_s: float | None) -> None:
        """Per-adapter counts, and the mean time from first output to end of requests that
        ran to their end (how long one keeps its adapter busy once it runs; a refused or
        failed request says nothing about that)."""
        if adapter is not None:
            self._adapter_running[adapter] -= 1
            if self._adapter_running[adapter] <= 0:
                del self._adapter_running[adapter]
        mean = self._mean_run_s
        if ran_s is None:
            return
        self._mean_run_s = ran_s if mean is None else mean + _MEAN_WEIGHT * (ran_s - mean)


def _done_tokens(queued: QueuedRequest) -> int:
    """Completion tokens generated before this attempt (a continued stream's)."""
    return queued.continuation.tokens if queued.continuation else 0


def _count_continued(step: EngineStep, done_before: int) -> None:
    """A continuation's step counted as the whole answer's: the answer so far went into the
    prompt, so its tokens move from the prompt's count to the completion's (the prompt's is
    then the original prompt's, within what tokenizing the text again changes)."""
    step.completion_tokens += done_before
    step.prompt_tokens = max(0, step.prompt_tokens - done_before)


def _without_ending(step: EngineStep) -> EngineStep:
    """The output of a step that ended in an abort, without the ending: sent before the
    request is handed back."""
    return EngineStep(
        choices=[
            dataclasses.replace(c, finish_reason=None, stop_reason=None)
            for c in step.choices
            if c.content or c.reasoning_content or c.tool_calls
        ],
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
    )


def _parsed(queued: QueuedRequest) -> ChatCompletionRequest | CompletionRequest:
    """The queued request read again, as the kind of request it is (chat unless it says)."""
    if queued.kind == "completion":
        return parse_completion_request(queued.request, ADMITTED)
    return parse_chat_request(queued.request, ADMITTED)
