"""Grouping and placement decisions: pure functions of data, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from berth.protocol.envelopes import QueuedRequest, WorkerInfo

# (model, adapter, lane, affinity key, workers to avoid)
GroupKey = tuple[str, str | None, str, str | None, frozenset[str]]

# lower dispatches sooner; aging lowers a group's rank by one per aging period waited
LANE_RANK = {"interactive": 0, "job": 1, "batch": 2}


@dataclass(slots=True)
class Pending:
    """A request read from an ingress stream and not yet dispatched."""

    stream: str
    entry_id: str
    request: QueuedRequest
    read_at: float


@dataclass(slots=True)
class PendingGroup:
    """Requests for one (model, adapter) gathering until the group is flushed."""

    key: GroupKey
    first_at: float
    items: list[Pending] = field(default_factory=list)


def add_to_groups(groups: dict[GroupKey, PendingGroup], items: Iterable[Pending]) -> None:
    """Put each pending request into the group of its (model, adapter)."""
    for item in items:
        req = item.request
        key = (req.model, req.adapter, req.lane, req.affinity, frozenset(req.avoid))
        group = groups.get(key)
        if group is None:
            group = groups[key] = PendingGroup(key=key, first_at=item.read_at)
        group.items.append(item)


def ready_groups(
    groups: Mapping[GroupKey, PendingGroup], now: float, max_size: int, max_wait: float
) -> list[GroupKey]:
    """Groups to flush now: full ones, and ones whose oldest request waited ``max_wait``."""
    return [
        key
        for key, group in groups.items()
        if len(group.items) >= max_size or now - group.first_at >= max_wait
    ]


def dispatch_order(
    groups: Mapping[GroupKey, PendingGroup], ready: Iterable[GroupKey], now: float, aging_s: float
) -> list[GroupKey]:
    """Ready groups, most urgent first: interactive before jobs before batches, except that
    every ``aging_s`` a group waited moves it up one lane, so no lane starves."""
    return sorted(
        ready, key=lambda k: LANE_RANK.get(k[2], 2) - (now - groups[k].first_at) / aging_s
    )


def split_expired(items: list[Pending], now: float) -> tuple[list[Pending], list[Pending]]:
    """(still valid, past their deadline) — ``now`` in epoch seconds."""
    valid: list[Pending] = []
    expired: list[Pending] = []
    for item in items:
        deadline = item.request.deadline
        (expired if deadline is not None and deadline < now else valid).append(item)
    return valid, expired


def next_deadline(groups: Mapping[GroupKey, PendingGroup], max_wait: float) -> float | None:
    """When the next group becomes due on time, or None when nothing waits."""
    if not groups:
        return None
    return min(group.first_at for group in groups.values()) + max_wait


def free_slots(worker: WorkerInfo, dispatched: Mapping[str, int]) -> int:
    """Capacity left on a worker, counting what was sent since its last heartbeat."""
    return worker.capacity - worker.running - dispatched.get(worker.id, 0)


@dataclass(frozen=True, slots=True)
class Target:
    """What placing one group depends on, besides the workers."""

    model: str
    adapter: str | None = None
    lane: str = "interactive"
    # prompt_cache_key: requests sharing it go to the same worker, for its prefix cache
    affinity: str | None = None
    # workers known dead (before their heartbeat expired): never picked
    avoid: frozenset[str] = frozenset()


def _room(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    batch_reserve: float,
) -> list[tuple[WorkerInfo, int]]:
    """Workers serving the model with room, and their free slots. Batch work only takes a
    worker while more than ``batch_reserve`` of its capacity stays free for interactive."""
    out = []
    for worker in workers:
        if worker.model != target.model or worker.id in target.avoid:
            continue
        free = free_slots(worker, dispatched)
        reserve = worker.capacity * batch_reserve if target.lane == "batch" else 0
        if free > reserve:
            out.append((worker, free))
    return out


def _affinity_score(key: str, worker_id: str) -> int:
    # rendezvous hashing: a key keeps its worker while the others come and go
    return int.from_bytes(hashlib.blake2b(f"{key}|{worker_id}".encode(), digest_size=8).digest())


def pick_worker(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    *,
    batch_reserve: float = 0.0,
    demand: Mapping[str, int] | None = None,
    recent: Mapping[str, Iterable[str]] | None = None,
) -> WorkerInfo | None:
    """Affinity placement. Among workers serving the model with room, prefer in order:
    one that holds the group's adapter; one where loading it evicts no adapter that
    queued work still needs (``demand``: queued requests per adapter); the adapter's
    home (its rendezvous-hash favourite, so each worker sees a stable share of the
    adapters and every replica agrees); one with a free LoRA slot; the cheapest eviction;
    the least loaded (in tenths of capacity); the prompt_cache_key's favourite.
    ``recent``: adapters sent to each worker since its last heartbeat, which it holds by
    now though its record does not say so yet. None when no worker can take the group."""
    demand = demand or {}
    recent = recent or {}
    best: WorkerInfo | None = None
    best_rank: tuple[bool, bool, int, bool, int, int, int] | None = None
    for worker, free in _room(workers, target, dispatched, batch_reserve):
        loaded = list(dict.fromkeys([*worker.loaded_adapters, *recent.get(worker.id, ())]))
        holds = target.adapter is None or target.adapter in loaded
        slot_free = holds or len(loaded) < worker.max_loras or worker.max_loras == 0
        eviction = 0 if slot_free else min(demand.get(a, 0) for a in loaded)
        load_tenths = (10 * free) // worker.capacity
        affinity = _affinity_score(target.affinity, worker.id) if target.affinity else 0
        home = _affinity_score(target.adapter, worker.id) if target.adapter else 0
        rank = (holds, eviction == 0, home, slot_free, -eviction, load_tenths, affinity)
        if best_rank is None or rank > best_rank:
            best, best_rank = worker, rank
    return best


def pick_worker_fcfs(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    turn: int,
    *,
    batch_reserve: float = 0.0,
) -> WorkerInfo | None:
    """First-come-first-served placement, for comparison: the next worker with room in
    round-robin order, blind to adapters and load."""
    room = sorted(_room(workers, target, dispatched, batch_reserve), key=lambda wf: wf[0].id)
    return room[turn % len(room)][0] if room else None


def fair_take(items: list[Pending], n: int) -> tuple[list[Pending], list[Pending]]:
    """Take ``n`` items round-robin across tenants, each tenant's own order kept, so one
    tenant's flood cannot push the others out of a group. Returns (taken, left)."""
    if len(items) <= n:
        return items, []
    queues: dict[str | None, list[Pending]] = {}
    for item in items:
        queues.setdefault(item.request.tenant, []).append(item)
    taken: list[Pending] = []
    depth = 0
    while len(taken) < n:
        for queue in queues.values():
            if depth < len(queue) and len(taken) < n:
                taken.append(queue[depth])
        depth += 1
    chosen = {id(item) for item in taken}
    return taken, [item for item in items if id(item) not in chosen]


def adapter_demand(groups: Mapping[GroupKey, PendingGroup]) -> dict[str, int]:
    """Queued requests per adapter: what evicting that adapter would cost."""
    demand: dict[str, int] = {}
    for (_, adapter, _, _, _), group in groups.items():
        if adapter is not None:
            demand[adapter] = demand.get(adapter, 0) + len(group.items)
    return demand
