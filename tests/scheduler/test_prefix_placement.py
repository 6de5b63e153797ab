"""Prefix keys and prefix-aware placement: pure functions, tested without Redis."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from berth.protocol.envelopes import WorkerInfo
from berth.protocol.prefix_key import BLOCK_BYTES, prefix_key
from berth.scheduler import policy
from berth.scheduler.policy import Target

SYSTEM = "You are a careful assistant. " * 40  # ~1,100 bytes: four full blocks


def _chat(*messages: tuple[str, str], adapter: str | None = None) -> tuple[bytes, ...]:
    body = {"messages": [{"role": role, "content": content} for role, content in messages]}
    return prefix_key("chat", body, "m", adapter)


def _worker(wid: str, running: int = 0, capacity: int = 10) -> WorkerInfo:
    return WorkerInfo(id=wid, model="m", capacity=capacity, running=running, queue=f"q.{wid}")


def _pick(
    workers: list[WorkerInfo],
    prompts: list[tuple[bytes, ...]],
    held: dict[str, set[bytes]],
    turn: int = 0,
    band: int = 2,
) -> str | None:
    chosen = policy.pick_worker(
        workers,
        Target("m"),
        {},
        turn=turn,
        prompts=prompts,
        cached=lambda wid: held.get(wid, set()),
        band_tenths=band,
    )
    return chosen.id if chosen else None


# -- the key -----------------------------------------------------------------------------


def test_key_is_chained_full_blocks_of_role_and_content() -> None:
    one = _chat(("system", SYSTEM), ("user", "What is a berth?"))
    other = _chat(("system", SYSTEM), ("user", "Something else entirely"))
    assert len(one) == len(SYSTEM.encode()) // BLOCK_BYTES
    # the system prompt's full blocks are shared; where the texts part, the chain parts
    shared = len(SYSTEM.encode()) // BLOCK_BYTES
    assert one[:shared] == other[:shared]
    # the role is part of the text
    assert _chat(("user", SYSTEM))[0] != _chat(("system", SYSTEM))[0]
    # shorter than a block: no key
    assert _chat(("user", "hi")) == ()


def test_a_conversations_next_turn_extends_its_key() -> None:
    first = _chat(("system", SYSTEM), ("user", "question one " * 30))
    second = _chat(
        ("system", SYSTEM),
        ("user", "question one " * 30),
        ("assistant", "answer one " * 30),
        ("user", "question two"),
    )
    assert second[: len(first)] == first
    assert len(second) > len(first)


def test_text_parts_key_like_plain_content() -> None:
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]}
    assert prefix_key("chat", parts, "m", None) == _chat(("system", SYSTEM))


def test_adapters_and_models_separate_keys() -> None:
    base = _chat(("system", SYSTEM))
    under_a = _chat(("system", SYSTEM), adapter="a")
    under_b = _chat(("system", SYSTEM), adapter="b")
    assert not set(base) & set(under_a)
    assert not set(under_a) & set(under_b)
    body = {"messages": [{"role": "system", "content": SYSTEM}]}
    assert not set(prefix_key("chat", body, "other", None)) & set(base)


def test_key_does_not_depend_on_the_hash_seed() -> None:
    # pinned: a change of the key's bytes is a change every replica must make at once
    body = {"messages": [{"role": "system", "content": "x" * 600}]}
    assert [b.hex() for b in prefix_key("chat", body, "m", None)] == [
        "944d1bb0560bdf48",
        "10390852eebb8cf4",
    ]
    code = (
        "from berth.protocol.prefix_key import prefix_key;"
        "print(prefix_key('chat', {'messages': [{'role': 'system', 'content': 'x' * 600}]},"
        " 'm', None)[1].hex())"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "10390852eebb8cf4"


def test_completion_prompts_are_keyed_too() -> None:
    text = prefix_key("completion", {"prompt": SYSTEM}, "m", None)
    assert len(text) == len(SYSTEM.encode()) // BLOCK_BYTES
    assert prefix_key("completion", {"prompt": list(range(200))}, "m", None)


# -- the rule ------------------------------------------------------------------------------


def test_cached_blocks_is_the_longest_leading_match() -> None:
    blocks = (b"a", b"b", b"c", b"d")
    assert policy.cached_blocks(blocks, set()) == 0
    assert policy.cached_blocks(blocks, {b"a", b"b"}) == 2
    assert policy.cached_blocks(blocks, {b"a", b"b", b"c", b"d"}) == 4


def test_longest_match_wins_within_the_band() -> None:
    prompt = _chat(("system", SYSTEM), ("user", "follow-up " * 40))
    workers = [_worker("w1", running=1), _worker("w2", running=0), _worker("w3")]
    held = {"w1": set(prompt), "w3": set(prompt[:2])}
    # w1 is a tenth more loaded than w2 and w3 but holds the whole prompt
    for turn in range(20):
        assert _pick(workers, [prompt], held, turn=turn) == "w1"


def test_out_of_the_band_load_wins() -> None:
    prompt = _chat(("system", SYSTEM))
    workers = [_worker("w1", running=3), _worker("w2", running=0)]
    held = {"w1": set(prompt)}
    assert _pick(workers, [prompt], held) == "w2"
    # with a wider band w1 keeps it
    assert _pick(workers, [prompt], held, band=3) == "w1"


def test_unseen_prefixes_spread_as_without_prefixes() -> None:
    workers = [_worker(f"w{i}") for i in range(4)]
    chosen = set()
    for turn in range(40):
        prompt = _chat(("system", f"prompt number {turn} " * 30))
        picked = _pick(workers, [prompt], {}, turn=turn)
        plain = policy.pick_worker(workers, Target("m"), {}, turn=turn)
        assert plain is not None and picked == plain.id
        chosen.add(picked)
    assert chosen == {"w0", "w1", "w2", "w3"}


def test_a_hot_prefix_spreads_to_a_second_worker_once_the_first_leaves_the_band() -> None:
    prompt = _chat(("system", SYSTEM))
    workers = [_worker("w1"), _worker("w2"), _worker("w3")]
    held: dict[str, set[bytes]] = {}
    dispatched: dict[str, int] = {}
    sent: list[str] = []
    for turn in range(12):
        chosen = policy.pick_worker(
            workers,
            Target("m"),
            dispatched,
            turn=turn,
            prompts=[prompt],
            cached=lambda wid: held.get(wid, set()),
        )
        assert chosen is not None
        sent.append(chosen.id)
        held.setdefault(chosen.id, set()).update(prompt)
        dispatched[chosen.id] = dispatched.get(chosen.id, 0) + 1
    first = sent[0]
    # the holder takes it until it is 3 tenths more loaded than the others, then a second
    # worker takes it (and caches it); nobody queues behind the first
    assert sent[:3] == [first] * 3
    assert sent[3] != first
    assert max(dispatched.values()) - min(dispatched.values()) <= 3
    assert len(set(sent)) == 3


def test_an_adapters_prefix_is_no_hit_for_another() -> None:
    under_a = _chat(("system", SYSTEM), adapter="a")
    under_b = _chat(("system", SYSTEM), adapter="b")
    workers = [_worker("w1"), _worker("w2")]
    held = {"w1": set(under_a)}
    for turn in range(10):
        plain = policy.pick_worker(workers, Target("m"), {}, turn=turn)
        assert plain is not None
        assert _pick(workers, [under_b], held, turn=turn) == plain.id
        assert _pick(workers, [under_a], held, turn=turn) == "w1"


@given(
    running=st.lists(st.integers(0, 10), min_size=1, max_size=8),
    holds=st.lists(st.integers(0, 4), min_size=8, max_size=8),
    band=st.integers(0, 10),
)
def test_picked_worker_has_room_is_in_the_band_and_holds_the_most(
    running: list[int], holds: list[int], band: int
) -> None:
    prompt = _chat(("system", SYSTEM))
    workers = [_worker(f"w{i}", running=r) for i, r in enumerate(running)]
    held = {f"w{i}": set(prompt[:n]) for i, n in enumerate(holds)}
    picked = _pick(workers, [prompt], held, band=band)
    room = [w for w in workers if w.running < w.capacity]
    if not room:
        assert picked is None
        return
    top = max(10 - w.running for w in room)
    band_workers = [w for w in room if 10 - w.running >= top - band]
    assert picked in {w.id for w in band_workers}
    assert len(held[picked]) == max(len(held[w.id]) for w in band_workers)
