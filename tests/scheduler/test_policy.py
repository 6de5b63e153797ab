"""Grouping and placement policy: pure functions, tested without Redis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from berth.protocol.envelopes import QueuedRequest, WorkerInfo
from berth.scheduler import policy


def _pending(
    i: int, model: str = "m", adapter: str | None = None, at: float = 0.0
) -> policy.Pending:
    req = QueuedRequest(id=f"r{i}", model=model, adapter=adapter, request={})
    return policy.Pending(stream=f"s:{model}", entry_id=f"{i}-0", request=req, read_at=at)


def _worker(
    wid: str, model: str = "m", adapters: tuple[str, ...] = (), capacity: int = 8, running: int = 0
) -> WorkerInfo:
    return WorkerInfo(
        id=wid,
        model=model,
        adapters=list(adapters),
        capacity=capacity,
        running=running,
        queue=f"q.{wid}",
    )


def test_groups_by_model_and_adapter() -> None:
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    policy.add_to_groups(
        groups,
        [
            _pending(0),
            _pending(1, adapter="a"),
            _pending(2),
            _pending(3, model="x"),
            _pending(4, adapter="a"),
        ],
    )
    assert {k: [p.request.id for p in g.items] for k, g in groups.items()} == {
        ("m", None, "interactive"): ["r0", "r2"],
        ("m", "a", "interactive"): ["r1", "r4"],
        ("x", None, "interactive"): ["r3"],
    }


def test_group_flushes_on_size_or_wait() -> None:
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    policy.add_to_groups(groups, [_pending(i, at=10.0) for i in range(3)])
    policy.add_to_groups(groups, [_pending(9, model="x", at=10.0)])
    assert policy.ready_groups(groups, now=10.001, max_size=3, max_wait=0.002) == [("m", None, "interactive")]
    assert sorted(policy.ready_groups(groups, now=10.002, max_size=3, max_wait=0.002)) == [
        ("m", None, "interactive"),
        ("x", None, "interactive"),
    ]
    assert policy.next_deadline(groups, 0.002) == 10.002
    assert policy.next_deadline({}, 0.002) is None


def test_pick_worker_serves_model_and_has_room() -> None:
    workers = [_worker("full", running=8), _worker("other", model="x"), _worker("ok", running=7)]
    assert policy.pick_worker(workers, "m", None, {}).id == "ok"  # type: ignore[union-attr]
    assert policy.pick_worker(workers, "m", None, {"ok": 1}) is None
    assert policy.pick_worker(workers, "nope", None, {}) is None


def test_pick_worker_prefers_adapter_then_least_loaded() -> None:
    workers = [
        _worker("idle"),
        _worker("holds", adapters=("a",), running=6),
        _worker("busy", running=4),
    ]
    assert policy.pick_worker(workers, "m", "a", {}).id == "holds"  # type: ignore[union-attr]
    assert policy.pick_worker(workers, "m", None, {}).id == "idle"  # type: ignore[union-attr]
    # the adapter holder is full: fall back to the least loaded
    assert policy.pick_worker(workers, "m", "a", {"holds": 2}).id == "idle"  # type: ignore[union-attr]


@given(
    st.lists(
        st.tuples(st.sampled_from(["m", "x"]), st.integers(1, 8), st.integers(0, 10)), max_size=12
    ),
    st.dictionaries(st.integers(0, 11).map(str), st.integers(0, 8)),
)
def test_picked_worker_always_fits(specs: list[tuple[str, int, int]], sent: dict[str, int]) -> None:
    workers = [_worker(str(i), model=m, capacity=c, running=r) for i, (m, c, r) in enumerate(specs)]
    chosen = policy.pick_worker(workers, "m", None, sent)
    fitting = [w for w in workers if w.model == "m" and policy.free_slots(w, sent) > 0]
    if chosen is None:
        assert not fitting
    else:
        assert chosen in fitting
        assert policy.free_slots(chosen, sent) == max(policy.free_slots(w, sent) for w in fitting)


def _lane_groups(ages: dict[str, float], now: float) -> dict[policy.GroupKey, policy.PendingGroup]:
    return {
        ("m", None, lane): policy.PendingGroup(key=("m", None, lane), first_at=now - age)
        for lane, age in ages.items()
    }


def test_interactive_before_jobs_before_batches() -> None:
    groups = _lane_groups({"batch": 1.0, "job": 1.0, "interactive": 0.0}, now=100.0)
    order = policy.dispatch_order(groups, list(groups), now=100.0, aging_s=30)
    assert [k[2] for k in order] == ["interactive", "job", "batch"]


def test_aging_lifts_a_long_waiting_batch() -> None:
    groups = _lane_groups({"batch": 90.0, "interactive": 0.0}, now=100.0)
    order = policy.dispatch_order(groups, list(groups), now=100.0, aging_s=30)
    assert [k[2] for k in order] == ["batch", "interactive"]


def test_batch_leaves_a_reserve_for_interactive() -> None:
    workers = [_worker("w", capacity=8, running=6)]  # 2 of 8 free
    assert policy.pick_worker(workers, "m", None, {}, "batch", batch_reserve=0.25) is None
    assert policy.pick_worker(workers, "m", None, {}, "interactive", batch_reserve=0.25)
    assert policy.pick_worker(workers, "m", None, {}, "batch", batch_reserve=0.0)


@given(st.dictionaries(st.sampled_from(["interactive", "job", "batch"]), st.floats(0, 1000)))
def test_waiting_longer_never_moves_a_group_back(ages: dict[str, float]) -> None:
    groups = _lane_groups(ages, now=1000.0)
    order = policy.dispatch_order(groups, list(groups), now=1000.0, aging_s=30)
    for lane in ages:
        older = {**ages, lane: ages[lane] + 100}
        regrouped = _lane_groups(older, now=1000.0)
        reorder = policy.dispatch_order(regrouped, list(regrouped), now=1000.0, aging_s=30)
        assert reorder.index(("m", None, lane)) <= order.index(("m", None, lane))
