"""Lanes reach the engine: a request's lane is its priority in vLLM's own scheduler.

The scheduler's lanes order only its queue; requests it already dispatched wait inside
the engine, where vLLM's priority policy starts the most urgent first and, when the KV
cache runs out, sets aside (preempts) the least urgent running request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.keys import LANES
from berth.workers.engine.base import EngineStep, engine_priority
from berth.workers.tinymodel import TinyModel

Build = Callable[..., ChatCompletionRequest]


def test_lanes_map_to_engine_priorities_most_urgent_lowest() -> None:
    # vLLM schedules a lower number first
    assert [engine_priority(lane) for lane in LANES] == [0, 1, 2]
    assert engine_priority("interactive") < engine_priority("job") < engine_priority("batch")
    # a lane this build does not know waits behind every known one
    assert engine_priority("someday") > engine_priority("batch")


class FirstSteps:
    """Runs requests on one engine and records the order of their first steps."""

    def __init__(self, engine: Any, build: Build) -> None:
        self.engine = engine
        self.build = build
        self.order: list[str] = []

    async def run(self, rid: str, tokens: int, lane: str) -> list[EngineStep]:
        req = self.build(max_completion_tokens=tokens, ignore_eos=True)
        steps: list[EngineStep] = []
        async for step in self.engine.generate(rid, req, None, lane=lane):
            if not steps:
                self.order.append(rid)
            steps.append(step)
        return steps

    async def until_started(self, count: int) -> None:
        async with asyncio.timeout(120):
            while len(self.order) < count:
                await asyncio.sleep(0.005)


def whole(steps: list[EngineStep], tokens: int) -> bool:
    last = steps[-1]
    return (
        last.finished
        and last.choices[-1].finish_reason == "length"
        and (last.completion_tokens == tokens)
    )


@pytest.mark.engine
@pytest.mark.asyncio(loop_scope="session")
async def test_an_interactive_request_starts_before_batch_work_waiting_ahead_of_it(
    vllm_engine: Any, chat_request: Build
) -> None:
    # the session engine runs 16 sequences; 40 batch requests fill it and leave 24 waiting.
    # Each runs a little longer than the one before, so slots free one at a time.
    assert vllm_engine._llm.vllm_config.scheduler_config.policy == "priority"
    runs = FirstSteps(vllm_engine, chat_request)
    tokens = {f"flood-{i}": 96 + 2 * i for i in range(40)}
    flood = [asyncio.create_task(runs.run(rid, n, "batch")) for rid, n in tokens.items()]
    await runs.until_started(16)
    waiting = set(tokens) - set(runs.order)
    assert len(waiting) >= 20

    urgent = await runs.run("urgent", 8, "interactive")
    done = dict(zip(tokens, await asyncio.gather(*flood), strict=True))

    # first come first served would start all of those first
    ahead = waiting & set(runs.order[: runs.order.index("urgent")])
    assert not ahead, f"batch requests waiting before it started first: {sorted(ahead)}"
    assert whole(urgent, 8)
    assert all(whole(steps, tokens[rid]) for rid, steps in done.items())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_engine(tiny_model: TinyModel) -> AsyncIterator[Any]:
    """An engine whose KV cache holds 512 tokens over 4 sequences: long requests outgrow
    it, and vLLM preempts one to let the others go on."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from berth.cli import parse
    from berth.workers.engine import make_engine
    from berth.workers.main import engine_config
    from berth.workers.settings import WorkerSettings

    settings = parse(
        [
            "worker",
            *("--model", str(tiny_model.path), "--served-model-name", tiny_model.name),
            *("--max-model-len", "256", "--dtype", "float32", "--kv-cache-space-gib", "1"),
            *("--max-num-seqs", "4", "--block-size", "32", "--num-gpu-blocks-override", "16"),
        ]
    )
    assert isinstance(settings, WorkerSettings)
    engine = make_engine(engine_config(settings))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


@pytest.mark.engine
@pytest.mark.asyncio(loop_scope="session")
async def test_when_the_cache_runs_out_batch_work_is_set_aside_and_still_completes(
    small_engine: Any, chat_request: Build
) -> None:
    runs = FirstSteps(small_engine, chat_request)
    tokens = {f"long-{i}": 200 + 4 * i for i in range(6)}
    batch = [asyncio.create_task(runs.run(rid, n, "batch")) for rid, n in tokens.items()]
    await runs.until_started(4)
    urgent = await runs.run("urgent", 100, "interactive")
    done = dict(zip(tokens, await asyncio.gather(*batch), strict=True))

    # the interactive request took a slot before the batch requests still waiting, and
    # was never the one set aside
    assert set(runs.order[: runs.order.index("urgent")]) == {f"long-{i}" for i in range(4)}
    assert whole(urgent, 100) and urgent[-1].preemptions == 0
    # batch requests were set aside (recomputed later) and still gave every token
    assert sum(steps[-1].preemptions for steps in done.values()) > 0
    assert all(whole(steps, tokens[rid]) for rid, steps in done.items())
