"""Grouping and placement decisions: pure functions of data, no I/O."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from berth.protocol.envelopes import QueuedRequest, WorkerInfo, worker_ref

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
    # its prompt's chained block hashes (protocol/prefix_key.py); empty when not computed
    prefix: tuple[bytes, ...] = ()


@dataclass(slots=True)
class PendingGroup:
    """Requests for one (model, adapter) gathering until the group is flushed."""

    key: GroupKey
    first_at: float
    items: list[Pending] = field(default_factory=list)
    # a group that found no worker is not looked at again before this
    not_before: float = 0.0
    # when its requests were last checked for cancels and deadlines
    checked_at: float = float("-inf")
    # whether it waits up to the group wait for company; a group whose first request came
    # alone (none of its key in the wait before) goes at once
    gathers: bool = True


def add_to_groups(
    groups: dict[GroupKey, PendingGroup],
    items: Iterable[Pending],
    last_read: dict[GroupKey, float] | None = None,
    max_wait: float = 0.0,
) -> None:
    """Put each pending request into the group of its (model, adapter).

    ``last_read`` (group key -> when the last request of that key was read; updated here):
    a new group waits for company only when the key's previous request came less than
    ``max_wait`` before its first, so a lone request is not held for a group that will
    not form (at low load the wait was pure latency), while a burst still groups."""
    for item in items:
        req = item.request
        key = (req.model, req.adapter, req.lane, req.affinity, frozenset(req.avoid))
        group = groups.get(key)
        if group is None:
            gathers = last_read is None or item.read_at - last_read.get(key, -max_wait) < max_wait
            group = groups[key] = PendingGroup(key=key, first_at=item.read_at, gathers=gathers)
        group.items.append(item)
        if last_read is not None:
            last_read[key] = item.read_at


def ready_groups(
    groups: Mapping[GroupKey, PendingGroup], now: float, max_size: int, max_wait: float
) -> list[GroupKey]:
    """Groups to flush now: full ones, and ones whose oldest request waited ``max_wait`` (at
    once for a group that does not gather); not those told to wait (``not_before``)."""
    return [
        key
        for key, group in groups.items()
        if now >= group.not_before
        and (len(group.items) >= max_size or now - group.first_at >= _wait(group, max_wait))
    ]


def _wait(group: PendingGroup, max_wait: float) -> float:
    return max_wait if group.gathers else 0.0


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


def worker_wait_s(
    request: QueuedRequest, declared: bool, cold_start_wait_s: float, no_worker_timeout_s: float
) -> float:
    """How long a request may wait while no live worker serves its model. A model the
    catalog declares is worth waiting for (its workers may be scaled to zero, starting):
    a job or batch line waits until its own deadline (``split_expired`` ends it), a chat
    ``cold_start_wait_s`` (0: the API refused it at once, so one queued meanwhile waits as
    for an undeclared model). An undeclared model's requests wait ``no_worker_timeout_s``."""
    if not declared:
        return no_worker_timeout_s
    if request.job:
        return math.inf
    return cold_start_wait_s or no_worker_timeout_s


def next_deadline(groups: Mapping[GroupKey, PendingGroup], max_wait: float) -> float | None:
    """When the next group becomes due on time, or None when nothing waits."""
    if not groups:
        return None
    return min(
        max(group.first_at + _wait(group, max_wait), group.not_before) for group in groups.values()
    )


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
    # workers known dead (before their heartbeat expired), as ``worker_ref``s: a worker
    # id (any incarnation) or one incarnation of it; never picked
    avoid: frozenset[str] = frozenset()


def avoided(worker: WorkerInfo, avoid: frozenset[str]) -> bool:
    """Whether ``avoid`` names this worker, or the incarnation of it that is alive now."""
    return bool(avoid) and (
        worker.id in avoid or worker_ref(worker.id, worker.incarnation) in avoid
    )


def _room(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    batch_reserve: float,
) -> list[tuple[WorkerInfo, int]]:
    """Workers serving the model with room, and their free slots. Batch work only takes a
    worker while more than ``batch_reserve`` of its capacity stays free for interactive.
    A draining worker (given SIGTERM) takes nothing new, whatever room it has."""
    out = []
    for worker in workers:
        if worker.draining or worker.model != target.model or avoided(worker, target.avoid):
            continue
        free = free_slots(worker, dispatched)
        reserve = worker.capacity * batch_reserve if target.lane == "batch" else 0
        if free > reserve:
            out.append((worker, free))
    return out


def _affinity_score(key: str, worker_id: str) -> int:
    # rendezvous hashing: a key keeps its worker while the others come and go
    return int.from_bytes(hashlib.blake2b(f"{key}|{worker_id}".encode(), digest_size=8).digest())


def _free_tenths(worker: WorkerInfo, free: int) -> int:
    return (10 * free) // worker.capacity


def cached_blocks(blocks: Sequence[bytes], cached: Container[bytes]) -> int:
    """How many leading blocks of a prompt a worker holds. Block hashes are chained, and a
    worker's index drops its least recently sent blocks first, so a worker holding block
    ``i`` holds every block before it: a binary search finds the longest match."""
    lo, hi = 0, len(blocks)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if blocks[mid - 1] in cached:
            lo = mid
        else:
            hi = mid - 1
    return lo


# the load band: workers at most this many tenths of capacity more loaded than the least
# loaded compete on their cached prefix
PREFIX_BAND_TENTHS = 2


def pick_worker(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    *,
    batch_reserve: float = 0.0,
    turn: int = 0,
    prompts: Sequence[Sequence[bytes]] = (),
    cached: Callable[[str], Container[bytes]] | None = None,
    band_tenths: int = PREFIX_BAND_TENTHS,
) -> WorkerInfo | None:
    """Placement of base-model work, among workers serving the model with room.

    With ``prompts`` (the group's prefix keys) and ``cached`` (worker id -> the blocks sent
    there): among the workers within ``band_tenths`` tenths of capacity of the least
    loaded, the one holding the most blocks of the group's prompts (the sum of each
    prompt's longest cached prefix). A worker that holds a hot prefix and is loaded out of
    the band loses it to a less loaded one, which then caches it too: a hot prefix spreads
    instead of queueing behind one worker. Prompts no worker holds (and workers that tie
    on them) go by the rule without prefixes:

    the least loaded in tenths of capacity; within a tenth the prompt_cache_key's
    favourite, else the one with the most free slots; workers that tie on all of that are
    taken in an order that changes with ``turn`` (the scheduler's count of placements).
    Never the first worker just because all tie: at light load every worker is in the top
    tenth, and a fixed order sent nearly everything to one. None when no worker can take
    the group."""
    room = [
        (w, free, _free_tenths(w, free))
        for w, free in _room(workers, target, dispatched, batch_reserve)
    ]
    if not room:
        return None
    scored = bool(prompts) and cached is not None
    floor = max(tenths for _, _, tenths in room) - band_tenths if scored else 0
    best: WorkerInfo | None = None
    best_rank: tuple[int, int, int, int, int] | None = None
    for worker, free, tenths in room:
        if scored and tenths < floor:
            continue
        held = 0
        if scored:
            assert cached is not None
            blocks = cached(worker.id)
            held = sum(cached_blocks(p, blocks) for p in prompts)
        affinity = _affinity_score(target.affinity, worker.id) if target.affinity else 0
        rank = (held, tenths, affinity, free, _affinity_score(f"turn {turn}", worker.id))
        if best_rank is None or rank > best_rank:
            best, best_rank = worker, rank
    return best


@dataclass(slots=True)
class Residency:
    """The adapters opened on one worker, as one scheduler replica knows them. A worker
    is sent requests only for its open adapters, at most ``max_loras`` of them, so its
    engine never has more adapters wanted than it has slots and never swaps one
    mid-batch. The open adapters are shared by all replicas (``keys.open_adapters``);
    ``closed`` (adapters this replica stopped sending there whose requests may still
    run) and ``sent`` are the replica's own."""

    # adapter -> when its quantum started (once the adapter it replaced had drained)
    open: dict[str, float] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)  # adapter -> closed at
    sent: dict[str, float] = field(default_factory=dict)  # adapter -> last sent at

    def slots_used(self, worker: WorkerInfo) -> int:
        """Open adapters, plus adapters running there that this replica did not send
        (another replica's): they hold a slot too."""
        others = {a for a, n in worker.adapter_running.items() if n > 0}
        others -= self.open.keys() | self.closed.keys()
        return len(self.open) + len(others)

    def quantum_start(self, placement: AdapterPlacement, now: float) -> float:
        """When the quantum of the adapter a placement opens starts. When it replaces an
        adapter, the engine starts the new one's requests only once the old one's have
        ended: when the request last sent for the old one should have run its course."""
        last = self.sent.get(placement.closes) if placement.closes is not None else None
        return now if last is None else max(now, last + run_s(placement.worker))

    def apply(self, placement: AdapterPlacement, adapter: str, now: float, starts: float) -> None:
        """Record a placement that opens ``adapter`` here, its quantum starting at
        ``starts`` (:meth:`quantum_start`)."""
        if placement.closes is not None:
            self.open.pop(placement.closes, None)
            self.closed[placement.closes] = now
        self.open[adapter] = starts
        self.closed.pop(adapter, None)

    def forget_drained(self, worker: WorkerInfo) -> None:
        """Forget closed adapters that a heartbeat newer than their closing shows drained."""
        for name, closed_at in list(self.closed.items()):
            if worker.heartbeat_at > closed_at and name not in worker.adapter_running:
                del self.closed[name]
                self.sent.pop(name, None)


@dataclass(frozen=True, slots=True)
class AdapterPlacement:
    worker: WorkerInfo
    # the adapter is opened on the worker by this placement
    opens: bool = False
    # the open adapter it replaces there
    closes: str | None = None


# the run time assumed for a worker that has not finished a request yet
DEFAULT_RUN_S = 1.0
# an adapter open on a worker takes another worker's spare slot too when that one is
# this many tenths of capacity less loaded
_SPREAD_TENTHS = 2


def run_s(worker: WorkerInfo) -> float:
    """How long a request runs on the worker, first output to end (a default until one
    request ended there)."""
    return worker.mean_run_s or DEFAULT_RUN_S


def quantum_s(worker: WorkerInfo, quantum: float) -> float:
    """How long an adapter keeps a worker's slot while other adapters wait: ``quantum``
    times the worker's mean run time."""
    return quantum * run_s(worker)


def place_adapter(
    workers: Iterable[WorkerInfo],
    target: Target,
    dispatched: Mapping[str, int],
    residency: Mapping[str, Residency],
    now: float,
    quantum: float,
    *,
    batch_reserve: float = 0.0,
) -> AdapterPlacement | None:
    """Placement of adapter work. Among workers serving the model with room:

    1. one where the adapter is open, the least loaded, then the prompt_cache_key's
       favourite;
    2. else (or when such a worker is clearly less loaded) one with a spare slot: the
       adapter is opened there; one that still holds its weights first, then the least
       loaded, then the adapter's home (its rendezvous-hash favourite: stable, and every
       replica agrees);
    3. else the slot of the adapter that has been open longest, once it has been open for
       its quantum (see :func:`quantum_s`): that adapter is closed there and this one
       opened. Its running requests finish; the engine starts the new adapter's as soon
       as the slot drains (vLLM admits a new adapter when the batch has room for it), and
       the new adapter's quantum counts from then (:meth:`Residency.apply`).

    None when the group must wait: no room, or every slot is taken by an adapter within
    its quantum. Waiting groups go in age order, so each waits at most about one quantum
    per slot turn."""
    adapter = target.adapter
    assert adapter is not None
    best_open: tuple[tuple[int, int], WorkerInfo] | None = None
    best_spare: tuple[tuple[bool, int, int], WorkerInfo] | None = None
    victim: tuple[float, WorkerInfo, str] | None = None
    for worker, free in _room(workers, target, dispatched, batch_reserve):
        slots = residency.get(worker.id) or Residency()
        tenths = _free_tenths(worker, free)
        if adapter in slots.open:
            affinity = _affinity_score(target.affinity, worker.id) if target.affinity else 0
            if best_open is None or (tenths, affinity) > best_open[0]:
                best_open = ((tenths, affinity), worker)
        elif worker.max_loras == 0 or slots.slots_used(worker) < worker.max_loras:
            rank = (adapter in worker.loaded_adapters, tenths, _affinity_score(adapter, worker.id))
            if best_spare is None or rank > best_spare[0]:
                best_spare = (rank, worker)
        else:
            expiry = now - quantum_s(worker, quantum)
            for name, opened_at in slots.open.items():
                if opened_at <= expiry and (victim is None or opened_at < victim[0]):
                    victim = (opened_at, worker, name)
    if best_open is not None and (
        best_spare is None or best_spare[0][1] < best_open[0][0] + _SPREAD_TENTHS
    ):
        return AdapterPlacement(best_open[1])
    if best_spare is not None:
        return AdapterPlacement(best_spare[1], opens=True)
    if victim is not None:
        return AdapterPlacement(victim[1], opens=True, closes=victim[2])
    return None


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
