"""Grouping and placement decisions: pure functions of data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from berth.protocol.envelopes import QueuedRequest, WorkerInfo

# (model, adapter, lane)
GroupKey = tuple[str, str | None, str]

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
        key = (item.request.model, item.request.adapter, item.request.lane)
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


def pick_worker(
    workers: Iterable[WorkerInfo],
    model: str,
    adapter: str | None,
    dispatched: Mapping[str, int],
    lane: str = "interactive",
    batch_reserve: float = 0.0,
) -> WorkerInfo | None:
    """The worker for a group: serves the model and has room; prefers one that holds the
    adapter, then the least loaded. Batch work only takes a worker while more than
    ``batch_reserve`` of its capacity stays free for interactive work. None when no such
    worker exists now."""
    best: WorkerInfo | None = None
    best_rank: tuple[bool, int] | None = None
    for worker in workers:
        if worker.model != model:
            continue
        free = free_slots(worker, dispatched)
        reserve = worker.capacity * batch_reserve if lane == "batch" else 0
        if free <= reserve:
            continue
        rank = (adapter is None or adapter in worker.adapters, free)
        if best_rank is None or rank > best_rank:
            best, best_rank = worker, rank
    return best
