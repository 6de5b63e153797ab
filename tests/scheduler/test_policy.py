"""Grouping, ordering, placement and fairness policy: pure functions, tested without Redis."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from berth.protocol.envelopes import QueuedRequest, WorkerInfo
from berth.scheduler import policy
from berth.scheduler.policy import Target


def _pending(
    i: int,
    model: str = "m",
    adapter: str | None = None,
    at: float = 0.0,
    tenant: str | None = None,
    lane: str = "interactive",
) -> policy.Pending:
    req = QueuedRequest(
        id=f"r{i}", model=model, adapter=adapter, request={}, tenant=tenant, lane=lane
    )
    return policy.Pending(stream=f"s:{model}", entry_id=f"{i}-0", request=req, read_at=at)


def _worker(
    wid: str,
    model: str = "m",
    loaded: tuple[str, ...] = (),
    capacity: int = 8,
    running: int = 0,
    max_loras: int = 2,
    adapter_running: dict[str, int] | None = None,
    mean_run_s: float | None = None,
) -> WorkerInfo:
    return WorkerInfo(
        id=wid,
        model=model,
        loaded_adapters=list(loaded),
        max_loras=max_loras,
        adapter_running=adapter_running or {},
        mean_run_s=mean_run_s,
        capacity=capacity,
        running=running,
        queue=f"q.{wid}",
    )


def _key(
    model: str = "m", adapter: str | None = None, lane: str = "interactive"
) -> policy.GroupKey:
    return (model, adapter, lane, None, frozenset())


def _pick(workers: list[WorkerInfo], affinity: str | None = None) -> str | None:
    chosen = policy.pick_worker(workers, Target("m", affinity=affinity), {})
    return chosen.id if chosen else None


def _place(
    workers: list[WorkerInfo],
    adapter: str,
    opened: dict[str, dict[str, float]] | None = None,
    now: float = 100.0,
    quantum: float = 1.5,
) -> policy.AdapterPlacement | None:
    """Place ``adapter`` with ``opened`` = worker -> {adapter: opened at}."""
    residency = {w: policy.Residency(open=dict(o)) for w, o in (opened or {}).items()}
    return policy.place_adapter(workers, Target("m", adapter), {}, residency, now, quantum)


# -- grouping and ordering -----------------------------------------------------------------


def test_groups_by_model_adapter_and_lane() -> None:
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    policy.add_to_groups(
        groups,
        [
            _pending(0),
            _pending(1, adapter="a"),
            _pending(2),
            _pending(3, model="x"),
            _pending(4, adapter="a"),
            _pending(5, lane="batch"),
        ],
    )
    assert {k: [p.request.id for p in g.items] for k, g in groups.items()} == {
        _key(): ["r0", "r2"],
        _key(adapter="a"): ["r1", "r4"],
        _key("x"): ["r3"],
        _key(lane="batch"): ["r5"],
    }


def test_group_flushes_on_size_or_wait() -> None:
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    policy.add_to_groups(groups, [_pending(i, at=10.0) for i in range(3)])
    policy.add_to_groups(groups, [_pending(9, model="x", at=10.0)])
    assert policy.ready_groups(groups, now=10.001, max_size=3, max_wait=0.002) == [_key()]
    assert sorted(policy.ready_groups(groups, now=10.002, max_size=3, max_wait=0.002)) == [
        _key(),
        _key("x"),
    ]
    assert policy.next_deadline(groups, 0.002) == 10.002
    assert policy.next_deadline({}, 0.002) is None


def test_a_group_told_to_wait_is_not_due_before_its_time() -> None:
    """A group that found no worker waits ``not_before`` instead of being retried on every
    loop turn, and keeps its age."""
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    policy.add_to_groups(groups, [_pending(1, at=10.0)])
    groups[_key()].not_before = 10.5
    assert policy.ready_groups(groups, now=10.4, max_size=3, max_wait=0.002) == []
    assert policy.next_deadline(groups, 0.002) == 10.5
    assert policy.ready_groups(groups, now=10.5, max_size=3, max_wait=0.002) == [_key()]
    assert groups[_key()].first_at == 10.0


def _lane_groups(ages: dict[str, float], now: float) -> dict[policy.GroupKey, policy.PendingGroup]:
    return {
        _key(lane=lane): policy.PendingGroup(key=_key(lane=lane), first_at=now - age)
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


@given(st.dictionaries(st.sampled_from(["interactive", "job", "batch"]), st.floats(0, 1000)))
def test_waiting_longer_never_moves_a_group_back(ages: dict[str, float]) -> None:
    groups = _lane_groups(ages, now=1000.0)
    order = policy.dispatch_order(groups, list(groups), now=1000.0, aging_s=30)
    for lane in ages:
        regrouped = _lane_groups({**ages, lane: ages[lane] + 100}, now=1000.0)
        reorder = policy.dispatch_order(regrouped, list(regrouped), now=1000.0, aging_s=30)
        assert reorder.index(_key(lane=lane)) <= order.index(_key(lane=lane))


def test_expired_requests_are_split_off() -> None:
    fresh, old, timeless = _pending(0), _pending(1), _pending(2)
    old.request.deadline, fresh.request.deadline = 5.0, 50.0
    valid, expired = policy.split_expired([fresh, old, timeless], now=10.0)
    assert (valid, expired) == ([fresh, timeless], [old])


# -- placement ------------------------------------------------------------------------------


def test_only_workers_serving_the_model_with_room() -> None:
    workers = [_worker("full", running=8), _worker("other", model="x"), _worker("ok", running=7)]
    assert _pick(workers) == "ok"
    assert policy.pick_worker(workers, Target("m"), {"ok": 1}) is None
    assert policy.pick_worker(workers, Target("nope"), {}) is None


def test_least_loaded_then_prompt_cache_key_affinity() -> None:
    workers = [_worker(f"w{i}") for i in range(4)]
    picks = {policy.pick_worker(workers, Target("m", affinity="conv-7"), {}).id for _ in range(5)}  # type: ignore[union-attr]
    assert len(picks) == 1  # the same key always lands on the same worker
    keyed = {policy.pick_worker(workers, Target("m", affinity=f"k{i}"), {}).id for i in range(40)}  # type: ignore[union-attr]
    assert len(keyed) > 1  # different keys spread
    # but load comes first: the favourite is skipped once it is clearly busier
    favourite = next(iter(picks))
    loaded = [_worker(w.id, running=6 if w.id == favourite else 0) for w in workers]
    assert policy.pick_worker(loaded, Target("m", affinity="conv-7"), {}).id != favourite  # type: ignore[union-attr]


def test_light_load_spreads_over_workers_that_tie() -> None:
    # ten conversations at once on two idle workers of capacity 256: every worker is in the
    # top tenth of free capacity, and a fixed order used to send them all to the first
    workers = [_worker("w1", capacity=256), _worker("w2", capacity=256)]
    sent: dict[str, int] = {}
    for turn in range(10):
        chosen = policy.pick_worker(workers, Target("m"), sent, turn=turn)
        assert chosen is not None
        sent[chosen.id] = sent.get(chosen.id, 0) + 1
    assert sent == {"w1": 5, "w2": 5}
    # workers equally loaded: each turn may pick another, all of them over a few turns
    idle = [_worker(f"w{i}", capacity=256) for i in range(4)]
    picks = {policy.pick_worker(idle, Target("m"), {}, turn=t).id for t in range(40)}  # type: ignore[union-attr]
    assert picks == {"w0", "w1", "w2", "w3"}


def test_batch_leaves_a_reserve_for_interactive() -> None:
    workers = [_worker("w", capacity=8, running=6)]  # 2 of 8 free
    assert policy.pick_worker(workers, Target("m", lane="batch"), {}, batch_reserve=0.25) is None
    assert policy.pick_worker(workers, Target("m"), {}, batch_reserve=0.25)
    assert policy.pick_worker(workers, Target("m", lane="batch"), {}, batch_reserve=0.0)


def test_fcfs_round_robins_blind_to_adapters() -> None:
    workers = [_worker("b", loaded=("a",)), _worker("a")]
    picks = [policy.pick_worker_fcfs(workers, Target("m", "a"), {}, t).id for t in range(4)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "a", "b"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["m", "x"]), st.integers(1, 8), st.integers(0, 10)),
        max_size=12,
    ),
    st.dictionaries(st.integers(0, 11).map(str), st.integers(0, 8)),
    st.sampled_from(["interactive", "batch"]),
)
def test_picked_worker_always_fits_and_is_least_loaded(
    specs: list[tuple[str, int, int]], sent: dict[str, int], lane: str
) -> None:
    workers = [_worker(str(i), model=m, capacity=c, running=r) for i, (m, c, r) in enumerate(specs)]
    chosen = policy.pick_worker(workers, Target("m", None, lane), sent, batch_reserve=0.25)
    reserve = {w.id: (w.capacity * 0.25 if lane == "batch" else 0) for w in workers}
    fitting = [w for w in workers if w.model == "m" and policy.free_slots(w, sent) > reserve[w.id]]
    if chosen is None:
        assert not fitting
        return
    assert chosen in fitting

    def tenths(w: WorkerInfo) -> int:
        return 10 * policy.free_slots(w, sent) // w.capacity

    assert tenths(chosen) == max(tenths(w) for w in fitting)


# -- LoRA placement -------------------------------------------------------------------------


def test_an_open_adapter_goes_where_it_is_open() -> None:
    workers = [_worker("idle", capacity=100), _worker("open", capacity=100, running=10)]
    chosen = _place(workers, "a", {"open": {"a": 99.0}})
    assert chosen == policy.AdapterPlacement(workers[1])
    # a worker holding its weights but not sending them is only a preference for opening
    workers = [_worker("idle"), _worker("holds", loaded=("a",), running=6)]
    assert _place(workers, "a") == policy.AdapterPlacement(workers[1], opens=True)


def test_a_hot_adapter_also_opens_on_a_clearly_less_loaded_worker() -> None:
    workers = [_worker("open", capacity=10, running=5), _worker("idle", capacity=10)]
    chosen = _place(workers, "a", {"open": {"a": 99.0}})
    assert chosen == policy.AdapterPlacement(workers[1], opens=True)
    # and a full worker never takes it
    workers = [_worker("open", capacity=10, running=10), _worker("busy", capacity=10, running=9)]
    chosen = _place(workers, "a", {"open": {"a": 99.0}})
    assert chosen == policy.AdapterPlacement(workers[1], opens=True)


def test_a_spare_slot_goes_to_the_least_loaded_then_the_adapters_home() -> None:
    workers = [_worker("busy", running=4), _worker("spare")]
    assert _place(workers, "z", {"busy": {"x": 1.0}}) == policy.AdapterPlacement(
        workers[1], opens=True
    )
    workers = [_worker(f"w{i}") for i in range(4)]
    homes = {a: _place(workers, a).worker.id for a in "pqrstuvw"}  # type: ignore[union-attr]
    assert homes == {a: _place(workers[::-1], a).worker.id for a in homes}  # type: ignore[union-attr]
    assert len(set(homes.values())) > 1  # adapters spread over the workers


def test_a_full_worker_hands_over_its_longest_open_slot_after_the_quantum() -> None:
    workers = [_worker("w0", mean_run_s=2.0), _worker("w1", mean_run_s=2.0)]
    opened = {"w0": {"a": 96.0, "b": 90.0}, "w1": {"c": 95.0, "d": 98.0}}
    # quantum 1.5 x 2 s: every slot was opened less than 3 s ago at t=92 -> wait
    assert _place(workers, "z", opened, now=92.0) is None
    # at t=100, b (open since 90) is the oldest past its quantum
    assert _place(workers, "z", opened, now=100.0) == policy.AdapterPlacement(
        workers[0], opens=True, closes="b"
    )
    # a worker that has not finished a request yet has a quantum of 1.5 x 1 s
    fresh = [_worker("w0"), _worker("w1")]
    assert _place(fresh, "z", {"w0": {"a": 98.0, "b": 98.0}, "w1": {"c": 98.0, "d": 98.6}})
    assert not _place(fresh, "z", {"w0": {"a": 98.6, "b": 98.6}, "w1": {"c": 98.6, "d": 98.6}})


def test_another_replicas_running_adapters_take_slots() -> None:
    workers = [_worker("shared", adapter_running={"x": 3}), _worker("mine", running=6)]
    # shared has one slot open here and one taken by x, which another replica sends there
    chosen = _place(workers, "z", {"shared": {"a": 99.9}})
    assert chosen == policy.AdapterPlacement(workers[1], opens=True)
    # an adapter this replica closed there and that still drains is not someone else's
    residency = {"shared": policy.Residency(open={"a": 99.9}, closed={"x": 99.0})}
    chosen = policy.place_adapter(workers, Target("m", "z"), {}, residency, 100.0, 1.5)
    assert chosen == policy.AdapterPlacement(workers[0], opens=True)


def test_workers_without_a_lora_limit_open_every_adapter() -> None:
    workers = [_worker("w", max_loras=0)]
    opened = {"w": {a: 99.9 for a in "abcdef"}}
    assert _place(workers, "z", opened) == policy.AdapterPlacement(workers[0], opens=True)


@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(0, 10), st.integers(0, 3)), max_size=6),
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 3)), max_size=60),
)
def test_placements_never_open_more_adapters_than_slots(
    specs: list[tuple[int, int, int]], arrivals: list[tuple[str, float]]
) -> None:
    """Applying every placement as the scheduler does keeps each worker's open adapters
    within max_loras, and a group only waits when every slot is within its quantum."""
    workers = [
        _worker(f"w{i}", capacity=c, running=r, max_loras=m)
        for i, (c, r, m) in enumerate(specs)
        if m > 0
    ]
    residency: dict[str, policy.Residency] = {}
    now = 0.0
    for adapter, dt in arrivals:
        now += dt
        target = Target("m", adapter)
        chosen = policy.place_adapter(workers, target, {}, residency, now, 1.5)
        if chosen is None:
            for w, _free in policy._room(workers, target, {}, 0.0):
                slots = residency.get(w.id, policy.Residency())
                assert adapter not in slots.open
                assert len(slots.open) == w.max_loras
                assert all(now - t < 1.5 for t in slots.open.values())
            continue
        assert policy.free_slots(chosen.worker, {}) > 0
        slots = residency.setdefault(chosen.worker.id, policy.Residency())
        if chosen.closes:
            assert now - slots.open[chosen.closes] >= 1.5
        if chosen.opens:
            slots.apply(chosen, adapter, now, slots.quantum_start(chosen, now))
        slots.sent[adapter] = now
        assert adapter in slots.open
        assert len(slots.open) <= chosen.worker.max_loras


def test_every_waiting_adapter_gets_a_slot_within_a_bounded_time() -> None:
    """8 adapters always waiting, 2 workers x 2 slots, quantum 1.5 s: taking the waiting
    adapters oldest first, as the scheduler's dispatch order does, none waits more than
    two quanta (8 adapters / 4 slots), each noticed up to one attempt late."""
    workers = [_worker("w0"), _worker("w1")]
    residency: dict[str, policy.Residency] = {}
    waiting_since = {a: 0.0 for a in "abcdefgh"}
    longest = 0.0
    now = 0.0
    while now < 30.0:
        for adapter in sorted(waiting_since, key=waiting_since.__getitem__):
            if any(adapter in r.open for r in residency.values()):
                continue
            chosen = _apply(workers, residency, adapter, now)
            if chosen is not None:
                longest = max(longest, now - waiting_since[adapter])
                waiting_since[adapter] = now  # it is open; its next request waits from now
        now += 0.05
    assert 1.5 <= longest <= 2 * (1.5 + 0.05) + 1e-9


def _apply(
    workers: list[WorkerInfo], residency: dict[str, policy.Residency], adapter: str, now: float
) -> policy.AdapterPlacement | None:
    chosen = policy.place_adapter(workers, Target("m", adapter), {}, residency, now, 1.5)
    if chosen is not None and chosen.opens:
        slots = residency.setdefault(chosen.worker.id, policy.Residency())
        slots.apply(chosen, adapter, now, slots.quantum_start(chosen, now))
    return chosen


# -- fairness -------------------------------------------------------------------------------


def test_fair_take_round_robins_tenants() -> None:
    flood = [_pending(i, tenant="hog") for i in range(10)]
    others = [_pending(100, tenant="t1"), _pending(101, tenant="t2")]
    taken, left = policy.fair_take(flood + others, 4)
    assert [p.request.tenant for p in taken].count("hog") == 2
    assert {p.request.id for p in taken} >= {"r100", "r101"}
    assert len(left) == 8


@given(st.lists(st.sampled_from(["a", "b", "c", None]), max_size=40), st.integers(0, 40))
def test_fair_take_keeps_everything_and_each_tenants_order(
    tenants: list[str | None], n: int
) -> None:
    items = [_pending(i, tenant=t) for i, t in enumerate(tenants)]
    taken, left = policy.fair_take(items, n)
    assert len(taken) == min(n, len(items))
    assert sorted(p.request.id for p in taken + left) == sorted(p.request.id for p in items)
    for tenant in set(tenants):
        mine = [p.request.id for p in items if p.request.tenant == tenant]
        got = [p.request.id for p in taken if p.request.tenant == tenant]
        assert got == mine[: len(got)]  # a tenant's requests are taken oldest first
        # nobody gets more than one turn ahead of a tenant that still has requests left
        if len(got) < len(mine):
            assert all(
                len([p for p in taken if p.request.tenant == other]) <= len(got) + 1
                for other in set(tenants)
            )


def test_workers_to_avoid_are_never_picked() -> None:
    workers = [_worker("dead"), _worker("alive", running=7)]
    chosen = policy.pick_worker(workers, Target("m", avoid=frozenset({"dead"})), {})
    assert chosen is not None and chosen.id == "alive"
    assert policy.pick_worker(workers[:1], Target("m", avoid=frozenset({"dead"})), {}) is None


def test_a_replacing_adapters_quantum_starts_when_the_old_one_drains() -> None:
    worker = _worker("w0", mean_run_s=0.8)
    slots = policy.Residency(open={"a": 90.0, "b": 99.0}, sent={"a": 99.5})
    placement = policy.AdapterPlacement(worker, opens=True, closes="a")
    # a's last request went out at 99.5 and runs 0.8 s: z starts in the engine at 100.3
    starts = slots.quantum_start(placement, 100.0)
    assert starts == 100.3
    # with nothing sent for the adapter it replaces, it starts at once
    assert policy.Residency(open={"a": 90.0}).quantum_start(placement, 100.0) == 100.0
    slots.apply(placement, "z", 100.0, starts)
    assert slots.open == {"b": 99.0, "z": 100.3}
    assert slots.closed == {"a": 100.0}
    # a heartbeat written after the close that shows no request of a: a is forgotten
    slots.forget_drained(worker.model_copy(update={"heartbeat_at": 100.2}))
    assert slots.closed == {} and "a" not in slots.sent


def test_a_lone_request_goes_at_once_and_a_burst_gathers() -> None:
    """With the read times of earlier requests, a group whose first request came alone
    (none of its key within the wait before) is due at once; one that follows another
    request of its key closely waits for company."""
    groups: dict[policy.GroupKey, policy.PendingGroup] = {}
    last_read: dict[policy.GroupKey, float] = {}
    policy.add_to_groups(groups, [_pending(1, at=10.0)], last_read, max_wait=0.002)
    assert policy.ready_groups(groups, now=10.0, max_size=3, max_wait=0.002) == [_key()]
    assert policy.next_deadline(groups, 0.002) == 10.0
    groups.clear()
    # the next one comes 1 ms later: a burst, so its group gathers
    policy.add_to_groups(groups, [_pending(2, at=10.001)], last_read, max_wait=0.002)
    assert policy.ready_groups(groups, now=10.001, max_size=3, max_wait=0.002) == []
    policy.add_to_groups(groups, [_pending(3, at=10.002)], last_read, max_wait=0.002)
    assert policy.ready_groups(groups, now=10.003, max_size=3, max_wait=0.002) == [_key()]
    assert [p.request.id for p in groups[_key()].items] == ["r2", "r3"]
    groups.clear()
    # another key is not a burst of this one; and 10 ms of quiet ends the burst
    policy.add_to_groups(groups, [_pending(4, model="x", at=10.004)], last_read, max_wait=0.002)
    policy.add_to_groups(groups, [_pending(5, at=10.012)], last_read, max_wait=0.002)
    assert sorted(policy.ready_groups(groups, now=10.012, max_size=3, max_wait=0.002)) == [
        _key(),
        _key("x"),
    ]


def test_how_long_a_request_waits_with_no_live_worker() -> None:
    chat = QueuedRequest(id="c", model="m", request={})
    job = QueuedRequest(id="j", model="m", request={}, job=True, lane="job")
    # an undeclared model: both wait no_worker_timeout_s
    assert policy.worker_wait_s(chat, False, 300, 60) == 60
    assert policy.worker_wait_s(job, False, 300, 60) == 60
    # a declared one: the job until its deadline, the chat cold_start_wait_s
    assert policy.worker_wait_s(job, True, 300, 60) == math.inf
    assert policy.worker_wait_s(chat, True, 300, 60) == 300
    # cold_start_wait_s 0: the API refuses at once; one queued meanwhile waits as before
    assert policy.worker_wait_s(chat, True, 0, 60) == 60


def test_a_draining_worker_is_never_picked() -> None:
    idle_but_draining = _worker("w1").model_copy(update={"draining": True})
    busy = _worker("w2", running=7)
    target = Target("m")
    for turn in range(10):
        assert policy.pick_worker([idle_but_draining, busy], target, {}, turn=turn) == busy
    assert policy.pick_worker([idle_but_draining], target, {}) is None
    assert policy.pick_worker_fcfs([idle_but_draining], target, {}, 0) is None
