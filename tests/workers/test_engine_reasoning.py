"""The real engine with a reasoning parser (qwen3): splitting, and constraints after thinking.

A second engine, so the main one keeps the worker's default setup (hermes only).
Logit biases on ``</think>`` make the random model's reasoning end when the test
needs it to.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from berth.protocol.chat import ChatCompletionRequest
from berth.workers.engine.base import EngineStep
from berth.workers.tinymodel import TinyModel

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

Build = Callable[..., ChatCompletionRequest]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def thinking_engine(tiny_model: TinyModel) -> AsyncIterator[Any]:
    from berth.workers.engine import EngineConfig, make_engine

    engine = make_engine(
        EngineConfig(
            model=str(tiny_model.path),
            served_model_name=tiny_model.name,
            max_model_len=256,
            enable_lora=False,
            tool_call_parser="hermes",
            reasoning_parser="qwen3",
            kv_cache_space_gib=1,
        )
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


@pytest.fixture(scope="module")
def end_think(tiny_tokenizer: Any) -> str:
    return str(tiny_tokenizer.convert_tokens_to_ids("</think>"))


async def run(engine: Any, rid: str, req: ChatCompletionRequest) -> list[EngineStep]:
    return [s async for s in engine.generate(rid, req, None)]


def parts(steps: list[EngineStep]) -> tuple[str, str]:
    content = "".join(c.content for s in steps for c in s.choices)
    reasoning = "".join(c.reasoning_content for s in steps for c in s.choices)
    return content, reasoning


async def test_thinking_goes_to_reasoning_content(
    thinking_engine: Any, chat_request: Build, end_think: str
) -> None:
    req = chat_request(max_completion_tokens=12, ignore_eos=True, logit_bias={end_think: -100})
    steps = await run(thinking_engine, "think-1", req)
    content, reasoning = parts(steps)
    assert content == "" and reasoning
    # usage's completion_tokens_details.reasoning_tokens: every token was thinking
    assert steps[-1].reasoning_tokens == steps[-1].completion_tokens == 12


async def test_separate_reasoning_false_leaves_it_in_content(
    thinking_engine: Any, chat_request: Build, end_think: str
) -> None:
    req = chat_request(
        max_completion_tokens=12,
        ignore_eos=True,
        logit_bias={end_think: -100},
        separate_reasoning=False,
    )
    content, reasoning = parts(await run(thinking_engine, "think-2", req))
    assert content and reasoning == ""


async def test_thinking_off_in_the_template_is_content(
    thinking_engine: Any, chat_request: Build, end_think: str
) -> None:
    req = chat_request(
        max_completion_tokens=12,
        ignore_eos=True,
        logit_bias={end_think: -100},
        chat_template_kwargs={"enable_thinking": False},
    )
    steps = await run(thinking_engine, "think-3", req)
    content, reasoning = parts(steps)
    assert content and reasoning == ""
    assert steps[-1].reasoning_tokens == 0


async def test_constraint_applies_after_reasoning_ends(
    thinking_engine: Any, chat_request: Build, end_think: str
) -> None:
    # "</think>" is forced first; from there the grammar holds, and masks it out again
    pattern = r"[a-z]{3}-[0-9]{2}"
    req = chat_request(max_completion_tokens=30, regex=pattern, logit_bias={end_think: 100})
    steps = await run(thinking_engine, "think-4", req)
    content, reasoning = parts(steps)
    assert reasoning == ""
    assert re.fullmatch(pattern, content), content
    assert steps[-1].choices[-1].finish_reason == "stop"


async def test_constraint_from_the_start_when_thinking_is_off(
    thinking_engine: Any, chat_request: Build
) -> None:
    pattern = r"(yes|no)"
    req = chat_request(
        max_completion_tokens=10, regex=pattern, chat_template_kwargs={"enable_thinking": False}
    )
    content, reasoning = parts(await run(thinking_engine, "think-5", req))
    assert re.fullmatch(pattern, content) and reasoning == ""
