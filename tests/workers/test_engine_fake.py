"""The fake engine: the same interface and checks as the real one, deterministic and fast."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.errors import InvalidRequest
from berth.workers.engine import Engine, make_engine
from berth.workers.engine.base import EngineStep
from berth.workers.engine.fake import FakeEngine

Build = Callable[..., ChatCompletionRequest]


async def started(**options: Any) -> FakeEngine:
    engine = make_engine(None, fake=True, served_model_name="fake", **options)
    assert isinstance(engine, FakeEngine)
    await engine.start()
    return engine


async def run(engine: Engine, rid: str, req: ChatCompletionRequest) -> list[EngineStep]:
    return [s async for s in engine.generate(rid, req, None)]


def text(steps: list[EngineStep], index: int = 0) -> str:
    return "".join(c.content for s in steps for c in s.choices if c.index == index)


def test_importing_the_package_does_not_import_vllm() -> None:
    import subprocess

    code = (
        "import sys, berth.workers.engine, berth.workers.engine.fake, "
        "berth.workers.engine.adapters, berth.workers.engine.checks; "
        "sys.exit(1 if 'vllm' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_interface(chat_request: Build) -> None:
    engine = await started(adapters=["a1"], max_model_len=1024)
    assert engine.model == "fake" and engine.adapters == ["a1"] and engine.max_model_len == 1024
    steps = await run(engine, "r1", chat_request(max_completion_tokens=5))
    assert [len(s.choices) for s in steps] == [1] * 5
    assert steps[-1].finished and not any(s.finished for s in steps[:-1])
    assert steps[-1].completion_tokens == 5 and steps[-1].prompt_tokens > 0
    assert steps[-1].choices[0].finish_reason == "length"
    assert engine.num_running() == 0
    await engine.shutdown()


async def test_text_is_deterministic(chat_request: Build) -> None:
    engine = await started()
    req = chat_request(max_completion_tokens=6, seed=3)
    first, second = text(await run(engine, "a", req)), text(await run(engine, "b", req))
    assert first == second and len(first.split()) == 6


async def test_default_length(chat_request: Build) -> None:
    engine = await started(default_max_tokens=4)
    assert (await run(engine, "r", chat_request()))[-1].completion_tokens == 4


async def test_n_choices(chat_request: Build) -> None:
    engine = await started()
    steps = await run(engine, "r", chat_request(n=3, max_completion_tokens=4))
    assert {c.index for c in steps[-1].choices} == {0, 1, 2}
    assert steps[-1].completion_tokens == 12
    assert len({text(steps, i) for i in range(3)}) == 3


async def test_stop_strings(chat_request: Build) -> None:
    engine = await started()
    free = text(await run(engine, "a", chat_request(max_completion_tokens=10)))
    stop = free.split()[3]
    steps = await run(engine, "b", chat_request(max_completion_tokens=10, stop=[stop]))
    assert text(steps) == free[: free.index(stop)]
    assert steps[-1].choices[-1].finish_reason == "stop"
    assert steps[-1].choices[-1].stop_reason == stop
    kept = await run(
        engine, "c", chat_request(max_completion_tokens=10, stop=[stop], no_stop_trim=True)
    )
    assert text(kept) == free[: free.index(stop) + len(stop)]


async def test_logprobs_shape(chat_request: Build) -> None:
    engine = await started()
    steps = await run(
        engine, "r", chat_request(max_completion_tokens=2, logprobs=True, top_logprobs=2)
    )
    entries = [e for s in steps for c in s.choices for e in c.logprobs or []]
    assert len(entries) == 2
    assert all(set(e) == {"token", "logprob", "bytes", "top_logprobs"} for e in entries)
    assert all(len(e["top_logprobs"]) == 2 for e in entries)


async def test_token_rate(chat_request: Build) -> None:
    engine = await started(tokens_per_s=100)
    start = time.monotonic()
    await run(engine, "r", chat_request(max_completion_tokens=10))
    assert 0.08 <= time.monotonic() - start < 1.0


async def test_max_concurrency_queues_inside_the_engine(chat_request: Build) -> None:
    engine = await started(tokens_per_s=200, max_concurrency=2)
    req = chat_request(max_completion_tokens=10)
    start = time.monotonic()
    tasks = [asyncio.create_task(run(engine, f"r{i}", req)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert engine.num_running() == 4  # two generating, two waiting
    await asyncio.gather(*tasks)
    # two waves of ~50 ms each
    assert time.monotonic() - start >= 0.09
    assert engine.num_running() == 0


async def test_waiting_requests_start_most_urgent_lane_first(chat_request: Build) -> None:
    # as vLLM's priority policy: the engine is full, batch work waits, and an interactive
    # request that came later takes the first free slot; within a lane, arrival order
    engine = await started(tokens_per_s=200, max_concurrency=1)
    req = chat_request(max_completion_tokens=3)
    started_order: list[str] = []

    async def one(rid: str, lane: str) -> list[EngineStep]:
        steps: list[EngineStep] = []
        async for step in engine.generate(rid, req, None, lane=lane):
            if not steps:
                started_order.append(rid)
            steps.append(step)
        return steps

    tasks = [asyncio.create_task(one("running", "batch"))]
    await asyncio.sleep(0.002)
    for rid, lane in [("batch-1", "batch"), ("job", "job"), ("batch-2", "batch")]:
        tasks.append(asyncio.create_task(one(rid, lane)))
        await asyncio.sleep(0)
    tasks.append(asyncio.create_task(one("interactive", "interactive")))
    results = await asyncio.gather(*tasks)
    assert started_order == ["running", "interactive", "job", "batch-1", "batch-2"]
    assert all(r[-1].choices[0].finish_reason == "length" for r in results)


async def test_a_cancelled_waiter_gives_up_its_turn(chat_request: Build) -> None:
    engine = await started(tokens_per_s=200, max_concurrency=1)
    req = chat_request(max_completion_tokens=3)
    busy = asyncio.create_task(run(engine, "busy", req))
    await asyncio.sleep(0.002)
    gone = asyncio.create_task(run(engine, "gone", req))
    await asyncio.sleep(0.002)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    await busy
    # the slot went back to the engine, not to the cancelled waiter
    steps = await asyncio.wait_for(run(engine, "after", req), 1.0)
    assert steps[-1].choices[0].finish_reason == "length"


async def test_abort(chat_request: Build) -> None:
    engine = await started(tokens_per_s=200)
    steps: list[EngineStep] = []
    async for step in engine.generate("r", chat_request(n=2, max_completion_tokens=1000), None):
        steps.append(step)
        if len(steps) == 3:
            await engine.abort("r")
    assert steps[-1].finished
    assert [c.finish_reason for c in steps[-1].choices] == ["abort", "abort"]
    assert steps[-1].completion_tokens < 2000
    assert engine.num_running() == 0
    await engine.abort("unknown")  # harmless


async def test_abort_while_waiting_for_a_slot(chat_request: Build) -> None:
    engine = await started(tokens_per_s=100, max_concurrency=1)
    busy = asyncio.create_task(run(engine, "busy", chat_request(max_completion_tokens=20)))
    waiting = asyncio.create_task(run(engine, "waiting", chat_request(max_completion_tokens=20)))
    await asyncio.sleep(0.02)
    await engine.abort("waiting")
    steps = await asyncio.wait_for(waiting, 0.1)  # at once, not after "busy" is done
    assert steps[-1].choices[0].finish_reason == "abort"
    assert not busy.done()
    assert (await busy)[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "w " * 3000}]}, "messages"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"stop_token_ids": [99999999]}, "stop_token_ids"),
        ({"lora_path": "nope"}, "lora_path"),
    ],
)
async def test_same_checks_as_the_real_engine(
    chat_request: Build, fields: dict[str, Any], param: str
) -> None:
    engine = await started()
    with pytest.raises(InvalidRequest) as err:
        await run(engine, "r", chat_request(**fields))
    assert err.value.param == param
    assert engine.num_running() == 0


async def test_known_adapter(chat_request: Build) -> None:
    engine = await started(adapters=["a1"])
    steps = [s async for s in engine.generate("r", chat_request(max_completion_tokens=2), "a1")]
    assert steps[-1].finished


async def test_generate_before_start_fails(chat_request: Build) -> None:
    engine = make_engine(None, fake=True)
    with pytest.raises(RuntimeError):
        await run(engine, "r", chat_request())


def _completion(**fields: Any) -> Any:
    from berth.protocol.completion import parse_completion_request

    return parse_completion_request({"model": "fake", "prompt": "one two three", **fields})


async def test_text_completion_runs_on_the_fake_as_on_the_real_engine() -> None:
    engine = await started()
    steps = await run(engine, "c1", _completion())
    # OpenAI's default of 16 tokens; the prompt's words (plus one) stand in for tokens
    assert steps[-1].completion_tokens == 16 and steps[-1].prompt_tokens == 4
    echo = await run(engine, "c2", _completion(echo=True, max_tokens=2))
    assert text(echo).startswith("one two three") and text(echo) != "one two three"
    ids = await run(engine, "c3", _completion(prompt=[1, 2], max_tokens=2, logprobs=1))
    assert ids[-1].prompt_tokens == 2
    assert all(c.logprobs for s in ids for c in s.choices if c.content)
    with pytest.raises(InvalidRequest) as caught:
        await run(engine, "c4", _completion(prompt=[10**8]))
    assert caught.value.param == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        await run(engine, "c5", _completion(max_tokens=5000))
    assert caught.value.param == "max_tokens"
