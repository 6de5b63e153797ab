"""What the API knows of the workers and the catalog: which models and adapters are served
or declared, kept fresh."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from berth.api.metrics import QUEUE_DEPTH, QUEUE_LENGTH
from berth.protocol import keys
from berth.protocol.catalog import CatalogModel
from berth.protocol.envelopes import WorkerInfo
from berth.protocol.errors import InvalidRequest, ModelNotFound, StoreUnavailable, Unavailable
from berth.store import queue
from berth.store.adapters import AdapterStore
from berth.store.catalog import Catalog
from berth.store.registry import WorkerLiveness, live_workers, models_served

log = logging.getLogger(__name__)

# a registry read taking longer than this counts as Redis being away: the client's own
# retries (~18 s) would otherwise keep /ready and new requests waiting that long
REDIS_PROBE_S = 3.0


class WorkerDirectory:
    """A cached view of the worker registry, reread every ``refresh_s`` seconds."""

    def __init__(
        self,
        redis: Redis,
        refresh_s: float,
        grace_s: float = 10.0,
        lora_paths: bool = False,
        seed: list[CatalogModel] | None = None,
    ) -> None:
        self._redis = redis
        # the catalog file's models, written to Redis by the first refresh that reaches it
        self._seed = seed or None
        self._catalog = Catalog(redis)
        self._declared: dict[str, CatalogModel] = {}
        # whether lora_path may name a directory (under the workers' adapter root) rather
        # than a registered adapter; off, an unknown name is refused here, not on a worker
        self._lora_paths = lora_paths
        self._registry = AdapterStore(redis)
        self._refresh_s = refresh_s
        # a model whose workers all vanished this recently is still served: a heartbeat
        # late under load, or a worker restarting, should not bounce requests
        self._grace_s = grace_s
        self._last_seen: dict[str, tuple[float, set[str]]] = {}
        self._liveness = WorkerLiveness()
        self._workers: list[WorkerInfo] = []
        self._models: dict[str, set[str]] = {}
        # a further served name -> the model's first (the one its queue is named by)
        self._aliases: dict[str, str] = {}
        # models and adapters that had workers once; without live ones they are unavailable
        self._known_models: set[str] = set()
        self._known_adapters: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        # whether the last registry read reached Redis; while not (from the start until a
        # read answers), new requests get a 503
        self.redis_ok = False
        self.redis_error = "the worker registry was not read yet"
        self._slow_reads = 0
        # whether the outage now going on was logged (its end is logged then too)
        self._away_logged = False

    async def start(self) -> None:
        """Read the registry once (at most ``REDIS_PROBE_S``: Redis may be away, and the API
        starts all the same), then keep it fresh in a task of its own."""
        await self.probe()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="worker-directory")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> None:
        if self._seed is not None:
            await self._catalog.seed(self._seed)
            self._seed = None
        started = time.monotonic()
        records = await live_workers(self._redis)
        now = time.monotonic()
        self._liveness.observe(records, started, now)
        self._workers = self._liveness.present()
        for model, served in models_served(self._workers).items():
            self._last_seen[model] = (now, served)
        self._models = {
            model: served
            for model, (seen, served) in self._last_seen.items()
            if now - seen <= self._grace_s
        }
        self._aliases = {
            alias: worker.model
            for worker in self._workers
            for alias in worker.aliases
            if worker.model in self._models
        }
        self._known_models = await self._registry.known_models()
        self._known_adapters = await self._registry.parents()
        self._declared = await self._catalog.read()
        await self._measure_queues(sorted(self._models.keys() | self._declared.keys()))

    async def _measure_queues(self, models: list[str]) -> None:
        """Each served or declared model's queue: its interactive stream, and every lane's
        requests together (those waiting for a worker included: what a model's
        autoscaler scales on)."""
        if not models:
            return
        streams = [keys.ingress_stream(m, lane) for m in models for lane in keys.LANES]
        lengths = await queue.lengths(self._redis, streams)
        lanes = len(keys.LANES)
        for index, model in enumerate(models):
            per_lane = lengths[index * lanes : (index + 1) * lanes]
            QUEUE_LENGTH.labels(model).set(per_lane[0])
            QUEUE_DEPTH.labels(model).set(sum(per_lane))

    async def probe(self) -> bool:
        """Refresh within ``REDIS_PROBE_S``; records (and returns) whether Redis answered.
        Never raises: Redis going away is a state, not a failure of the caller."""
        try:
            async with asyncio.timeout(REDIS_PROBE_S):
                await self.refresh()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # whatever the last reads found missing may just not have been written again
            self._liveness.reset()
            reason = str(err) or type(err).__name__
            if isinstance(err, TimeoutError) and self._slow_reads < 1:
                # one slow read may be this process's own loop, busy under a flood of
                # requests, not Redis: refusing everyone for it would hand a flooding
                # client a denial of service; a second one in a row counts
                self._slow_reads += 1
                return self.redis_ok
            if not self._away_logged:
                log.error("reading the worker registry failed: %s", reason)
                self._away_logged = True
            self.redis_ok, self.redis_error = False, reason
            return False
        if self._away_logged:
            log.warning("reading the worker registry works again")
            self._away_logged = False
        self.redis_ok, self.redis_error = True, ""
        self._slow_reads = 0
        return True

    async def _loop(self) -> None:
        while True:
            # probe() never raises; this loop ends only when cancelled
            await asyncio.sleep(self._refresh_s if self.redis_ok else min(self._refresh_s, 0.5))
            await self.probe()

    @property
    def workers(self) -> list[WorkerInfo]:
        return self._workers

    def models(self) -> dict[str, set[str]]:
        return self._models

    def is_alive(self, worker_id: str, incarnation: str | None = None) -> bool:
        """Whether the worker lives, and, given ``incarnation``, is still that process start
        (a worker restarted under the same id lost its predecessor's requests), as judged
        over the registry reads (``WorkerLiveness``): while Redis is away, or for less than
        a heartbeat TTL of reads without a new heartbeat, it counts as alive."""
        return self._liveness.is_alive(worker_id, incarnation)

    def stopped(self, worker_id: str) -> bool:
        """Whether the worker is gone by a clean stop (drained), not lost."""
        return self._liveness.stopped(worker_id)

    def resolve(
        self, model: str, lora_path: str | None, may_wait: bool = False
    ) -> tuple[str, str | None]:
        """(base model, adapter) for a request's ``model`` and ``lora_path``.

        ``model`` may name a base model or, as vLLM's server allows, an adapter. A model of
        the catalog that no live worker serves resolves too when the request ``may_wait``
        for a worker (it is queued until one comes); otherwise it is unavailable (503).
        """
        if not self.redis_ok:
            raise StoreUnavailable("the request queue (Redis) cannot be reached; retry shortly")
        model = self._aliases.get(model, model)
        if model in self._models:
            return model, self._adapter(model, lora_path)
        for base, adapters in self._models.items():
            if model in adapters:
                return base, _named_adapter(model, lora_path)
        known = model if model in self._known_models else self._known_adapters.get(model)
        declared = model if model in self._declared else self._declared_parent(model)
        if declared is not None and may_wait:
            if declared == model:
                return model, self._adapter(model, lora_path)
            return declared, _named_adapter(model, lora_path)
        if known is not None or declared is not None:
            raise Unavailable(
                f"no worker serving model {known or declared!r} is alive right now; retry shortly",
                param="model",
            )
        raise ModelNotFound(f"The model {model!r} does not exist.", param="model")

    def _declared_parent(self, adapter: str) -> str | None:
        """The declared model ``adapter`` is an adapter of (the catalog's, or registered)."""
        parent = self._known_adapters.get(adapter)
        if parent in self._declared:
            return parent
        for name, entry in self._declared.items():
            if adapter in entry.adapter_names():
                return name
        return None

    def serves(self, model: str) -> bool:
        """Whether a live worker serves ``model`` (a base model, a further name, an adapter)."""
        model = self._aliases.get(model, model)
        return model in self._models or any(model in a for a in self._models.values())

    def _adapter(self, model: str, lora_path: str | None) -> str | None:
        """``lora_path`` if it names an adapter of ``model`` that is registered or served
        (or, with lora paths allowed, a path for the worker to check); else 400, so an
        unknown name never reaches the queue, the scheduler's groups or a worker."""
        if lora_path is None or lora_path in self._models.get(model, ()):
            return lora_path
        parent = self._known_adapters.get(lora_path)
        if parent is None and model in self._declared:
            parent = model if lora_path in self._declared[model].adapter_names() else None
        if parent == model:
            return lora_path
        if parent is not None:
            raise InvalidRequest(
                f"LoRA adapter {lora_path!r} applies to model {parent!r}, not {model!r}",
                param="lora_path",
            )
        if self._lora_paths:
            return lora_path
        known = sorted(
            self._models.get(model, set())
            | {name for name, base in self._known_adapters.items() if base == model}
            | (self._declared[model].adapter_names() if model in self._declared else set())
        )
        shown = ", ".join(repr(name) for name in known[:20]) or "none"
        raise InvalidRequest(
            f"unknown LoRA adapter {lora_path[:200]!r}; registered adapters of {model!r}: {shown}",
            param="lora_path",
            code="adapter_not_found",
        )

    def model_cards(self) -> list[dict[str, object]]:
        """GET /v1/models entries: the models served now and every declared one."""
        models = {name: entry.adapter_names() for name, entry in self._declared.items()}
        for name, served in self._models.items():
            models[name] = models.get(name, set()) | served
        return model_cards(models, int(time.time()), self._aliases)


def _named_adapter(adapter: str, lora_path: str | None) -> str:
    """``model`` named an adapter: ``lora_path`` may name it again, no other."""
    if lora_path is not None and lora_path != adapter:
        raise InvalidRequest(
            f"model {adapter!r} is an adapter; lora_path {lora_path!r} names another",
            param="lora_path",
        )
    return adapter


def model_cards(
    models: dict[str, set[str]], created: int, aliases: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """GET /v1/models entries: base models (each further served name of one as a card of
    its own, as vLLM's server lists them), then adapters naming their parent (plain dicts,
    the shape the ``openai`` client's ``Model`` reads; no per-request model building)."""
    cards: list[dict[str, object]] = []
    for base in sorted(models):
        cards.append(
            {"id": base, "object": "model", "created": created, "owned_by": "berth", "root": base}
        )
        for alias in sorted(a for a, named in (aliases or {}).items() if named == base):
            cards.append(
                {
                    "id": alias,
                    "object": "model",
                    "created": created,
                    "owned_by": "berth",
                    "root": base,
                }
            )
        for adapter in sorted(models[base]):
            cards.append(
                {
                    "id": adapter,
                    "object": "model",
                    "created": created,
                    "owned_by": "berth",
                    "root": adapter,
                    "parent": base,
                }
            )
    return cards
