"""The real vLLM CPU engine on the tiny model: generation, constraints, tools, LoRA, abort.

The tiny model's text is gibberish, so tests assert what holds for any weights:
token counts, finish reasons, that constrained output matches its constraint,
and that parameters visibly reach the engine (a +100 logit bias, a stop token).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.errors import InvalidRequest
from berth.workers.engine.base import EngineStep

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

Build = Callable[..., ChatCompletionRequest]


async def run(engine: Any, rid: str, req: ChatCompletionRequest, adapter: str | None = None):
    return [step async for step in engine.generate(rid, req, adapter)]


def text(steps: list[EngineStep], index: int = 0) -> str:
    return "".join(c.content for s in steps for c in s.choices if c.index == index)


def finish(steps: list[EngineStep], index: int = 0) -> Any:
    reasons = [c.finish_reason for s in steps for c in s.choices if c.index == index]
    assert all(r is None for r in reasons[:-1]), "a choice finished twice"
    return reasons[-1]


def tool_calls(steps: list[EngineStep]) -> list[dict[str, Any]]:
    """Assemble streamed tool-call deltas into whole calls, as a client would."""
    calls: dict[int, dict[str, Any]] = {}
    for step in steps:
        for choice in step.choices:
            for delta in choice.tool_calls or []:
                call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                if "id" in delta:
                    call["id"] = delta["id"]
                fn = delta.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


async def test_vllm_flags_given_to_the_worker_reach_the_engine(vllm_engine: Any) -> None:
    # the fixture's engine was configured from `berth worker ... --dtype float32
    # --max-num-seqs 16 --seed 7`: vLLM's own configuration shows them (the defaults
    # would be the model's dtype, 256 sequences on the CPU build, seed 0)
    import torch

    config = vllm_engine._llm.vllm_config
    assert config.model_config.dtype == torch.float32
    assert config.scheduler_config.max_num_seqs == 16
    assert config.model_config.seed == 7
    # berth's own flags still configure what they did
    assert config.model_config.max_model_len == 512
    assert config.lora_config.max_loras == 2


async def test_a_repeated_prompt_reports_its_cached_tokens(
    vllm_engine: Any, chat_request: Build
) -> None:
    # usage.prompt_tokens_details.cached_tokens: vLLM's num_cached_tokens, whole blocks of
    # the prompt found in the prefix cache; a prompt no request sent before finds none
    content = "cached prefix " + " ".join(f"w{i}" for i in range(120))
    req = chat_request(messages=[{"role": "user", "content": content}], max_completion_tokens=2)
    first = (await run(vllm_engine, "cache-1", req))[-1]
    again = (await run(vllm_engine, "cache-2", req))[-1]
    assert first.cached_tokens == 0
    assert 0 < again.cached_tokens < again.prompt_tokens
    assert again.cached_tokens % 16 == 0, "whole KV blocks"


async def test_vllms_own_metrics_are_in_the_workers_registry(
    vllm_engine: Any, chat_request: Build
) -> None:
    # the worker serves prometheus_client's registry (--metrics-port): vLLM's vllm:* series
    # (the dashboards and alerts written for vLLM) are there beside berth's own
    from prometheus_client import REGISTRY
    from prometheus_client.parser import text_string_to_metric_families

    await run(vllm_engine, "metrics-1", chat_request(max_completion_tokens=2))
    from prometheus_client import generate_latest

    samples = {
        s.name: s
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        for s in family.samples
        if s.name.startswith("vllm:")
    }
    for name in (
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert name in samples, name
    assert samples["vllm:prompt_tokens_total"].value > 0
    assert samples["vllm:prompt_tokens_total"].labels["model_name"] == "berth-tiny"


async def test_max_tokens_ends_with_length(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=8, ignore_eos=True, temperature=0)
    steps = await run(vllm_engine, "len-1", req)
    last = steps[-1]
    assert last.finished and last.completion_tokens == 8
    assert last.prompt_tokens > 5
    assert finish(steps) == "length"
    assert all(not s.finished for s in steps[:-1])


async def test_default_max_tokens_is_the_rest_of_the_context(
    vllm_engine: Any, chat_request: Build
) -> None:
    req = chat_request(ignore_eos=True, temperature=0)
    steps = await run(vllm_engine, "len-rest", req)
    assert steps[-1].prompt_tokens + steps[-1].completion_tokens == vllm_engine.max_model_len
    assert finish(steps) == "length"


async def test_n_two_choices_each_finish(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(n=2, max_completion_tokens=12, ignore_eos=True, seed=7, temperature=1.0)
    steps = await run(vllm_engine, "n-2", req)
    assert finish(steps, 0) == finish(steps, 1) == "length"
    assert steps[-1].completion_tokens == 24
    assert text(steps, 0) != text(steps, 1)


async def test_seed_makes_sampling_repeatable(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=16, ignore_eos=True, seed=42, temperature=1.0)
    first = text(await run(vllm_engine, "seed-1", req))
    second = text(await run(vllm_engine, "seed-2", req))
    assert first == second


async def test_stop_string_trims_and_reports_it(vllm_engine: Any, chat_request: Build) -> None:
    greedy = text(
        await run(
            vllm_engine,
            "stop-0",
            chat_request(max_completion_tokens=40, ignore_eos=True, temperature=0),
        )
    )
    # a printable two-character piece from the middle of the greedy output
    spots = [
        i
        for i in range(4, len(greedy) - 2)
        if greedy[i : i + 2].isascii()
        and greedy[i : i + 2].isprintable()
        and greedy[i : i + 2].strip()
    ]
    assert spots, greedy
    stop = greedy[spots[0] : spots[0] + 2]
    expected = greedy[: greedy.index(stop)]

    steps = await run(
        vllm_engine,
        "stop-1",
        chat_request(max_completion_tokens=40, ignore_eos=True, temperature=0, stop=[stop]),
    )
    assert finish(steps) == "stop"
    assert steps[-1].choices[-1].stop_reason == stop
    assert text(steps) == expected

    kept = await run(
        vllm_engine,
        "stop-2",
        chat_request(
            max_completion_tokens=40, ignore_eos=True, temperature=0, stop=[stop], no_stop_trim=True
        ),
    )
    assert text(kept) == expected + stop


async def test_stop_token_id_ends_the_choice(
    vllm_engine: Any, chat_request: Build, tiny_tokenizer: Any
) -> None:
    # the bias makes "Q" the first token; it is also the stop token
    (q,) = tiny_tokenizer.encode("Q", add_special_tokens=False)
    req = chat_request(
        max_completion_tokens=10, ignore_eos=True, logit_bias={str(q): 100}, stop_token_ids=[q]
    )
    steps = await run(vllm_engine, "stopid-1", req)
    assert finish(steps) == "stop"
    assert steps[-1].choices[-1].stop_reason == q
    assert steps[-1].completion_tokens == 1


async def test_logprobs_are_openai_shaped(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3)
    steps = await run(vllm_engine, "lp-1", req)
    entries = [e for s in steps for c in s.choices for e in c.logprobs or []]
    assert len(entries) == 6
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert isinstance(entry["token"], str) and entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode("utf-8", errors="replace"))
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert all(set(t) == {"token", "logprob", "bytes"} for t in tops)
        assert entry["logprob"] <= tops[0]["logprob"] + 1e-6


async def test_logprobs_without_top_logprobs(vllm_engine: Any, chat_request: Build) -> None:
    steps = await run(
        vllm_engine, "lp-2", chat_request(max_completion_tokens=3, logprobs=True, ignore_eos=True)
    )
    entries = [e for s in steps for c in s.choices for e in c.logprobs or []]
    assert len(entries) == 3 and all(e["top_logprobs"] == [] for e in entries)
    plain = await run(vllm_engine, "lp-3", chat_request(max_completion_tokens=3))
    assert all(c.logprobs is None for s in plain for c in s.choices)


async def test_logit_bias_reaches_the_sampler(
    vllm_engine: Any, chat_request: Build, tiny_tokenizer: Any
) -> None:
    (token_id,) = tiny_tokenizer.encode("Q", add_special_tokens=False)
    req = chat_request(max_completion_tokens=5, ignore_eos=True, logit_bias={str(token_id): 100})
    assert text(await run(vllm_engine, "bias-1", req)) == "QQQQQ"


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


# xgrammar's JSON strings admit raw control characters, which strict json.loads refuses;
# they are the random model's doing, not a schema violation.


async def test_json_schema_output_is_valid(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(
        max_completion_tokens=200,
        seed=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA},
        },
    )
    steps = await run(vllm_engine, "json-1", req)
    assert finish(steps) == "stop"
    jsonschema.validate(json.loads(text(steps), strict=False), SCHEMA)


async def test_regex_output_matches(vllm_engine: Any, chat_request: Build) -> None:
    pattern = r"[a-z]{3}-[0-9]{2}"
    steps = await run(
        vllm_engine, "regex-1", chat_request(max_completion_tokens=30, regex=pattern, n=2, seed=3)
    )
    for i in (0, 1):
        assert finish(steps, i) == "stop"
        assert re.fullmatch(pattern, text(steps, i)), text(steps, i)


async def test_ebnf_output_matches(vllm_engine: Any, chat_request: Build) -> None:
    steps = await run(
        vllm_engine, "ebnf-1", chat_request(max_completion_tokens=10, ebnf='root ::= "yes" | "no"')
    )
    assert text(steps) in {"yes", "no"} and finish(steps) == "stop"


async def test_invalid_regex_is_invalid_request(vllm_engine: Any, chat_request: Build) -> None:
    with pytest.raises(InvalidRequest) as err:
        await run(vllm_engine, "regex-bad", chat_request(regex="[a-"))
    assert err.value.param == "regex"
    assert vllm_engine.num_running() == 0


# A pattern keeps the random model's strings free of control characters, which
# xgrammar admits in JSON strings but which trip vLLM's streaming hermes parser.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]


async def test_tool_choice_required_yields_tool_calls(
    vllm_engine: Any, chat_request: Build
) -> None:
    req = chat_request(
        max_completion_tokens=120,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=5,
    )
    steps = await run(vllm_engine, "tools-1", req)
    calls = tool_calls(steps)
    assert len(calls) == 1 and calls[0]["name"] in {"get_weather", "noop"}
    assert calls[0]["id"]
    args = json.loads(calls[0]["arguments"])
    if calls[0]["name"] == "get_weather":
        jsonschema.validate(args, TOOLS[0]["function"]["parameters"])
    assert finish(steps) == "tool_calls"
    assert text(steps).strip() == ""


async def test_named_tool_choice_calls_that_tool(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(
        max_completion_tokens=120,
        tools=TOOLS,
        seed=6,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    steps = await run(vllm_engine, "tools-2", req)
    calls = tool_calls(steps)
    assert [c["name"] for c in calls] == ["get_weather"]
    args = json.loads(calls[0]["arguments"])
    jsonschema.validate(args, TOOLS[0]["function"]["parameters"])
    # OpenAI ends a forced (named) call with "stop"; "tool_calls" is for the model's own choice
    assert finish(steps) == "stop"


async def test_lora_adapter_changes_the_output(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=16, ignore_eos=True, temperature=0)
    base = text(await run(vllm_engine, "lora-0", req))
    a = text(await run(vllm_engine, "lora-a", req, adapter="tiny-lora-a"))
    a_again = text(await run(vllm_engine, "lora-a2", req, adapter="tiny-lora-a"))
    by_path = text(
        await run(
            vllm_engine,
            "lora-b",
            chat_request(
                max_completion_tokens=16, ignore_eos=True, temperature=0, lora_path="./tiny-lora-b"
            ),
        )
    )
    assert a != base and by_path != base and a != by_path
    assert a == a_again
    assert "tiny-lora-a" in vllm_engine.adapters


@pytest.mark.parametrize("lora_path", ["nope", "../model", "/etc"])
async def test_bad_adapter_is_invalid_request(
    vllm_engine: Any, chat_request: Build, lora_path: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        await run(vllm_engine, "lora-bad", chat_request(lora_path=lora_path))
    assert err.value.param == "lora_path"


async def test_adapter_the_engine_cannot_load_is_refused_and_the_engine_lives(
    vllm_engine: Any, chat_request: Build
) -> None:
    for attempt in range(2):  # a failed load is not remembered as loaded
        with pytest.raises(InvalidRequest, match="max_lora_rank") as err:
            await run(vllm_engine, f"lora-big-{attempt}", chat_request(lora_path="too-big"))
        assert err.value.param == "lora_path"
    steps = await run(vllm_engine, "lora-after", chat_request(max_completion_tokens=2))
    assert steps[-1].finished and vllm_engine.num_running() == 0


async def test_model_may_name_an_adapter(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=16, ignore_eos=True, temperature=0)
    named = chat_request(
        model="tiny-lora-a", max_completion_tokens=16, ignore_eos=True, temperature=0
    )
    assert text(await run(vllm_engine, "model-a", named)) == text(
        await run(vllm_engine, "model-a2", req, adapter="tiny-lora-a")
    )


async def test_abort_mid_generation(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(n=2, max_completion_tokens=400, ignore_eos=True)
    steps: list[EngineStep] = []
    async for step in vllm_engine.generate("abort-1", req, None):
        steps.append(step)
        if len(steps) == 2:
            assert vllm_engine.num_running() == 1
            await vllm_engine.abort("abort-1")
    last = steps[-1]
    assert last.finished
    assert {c.index: c.finish_reason for c in last.choices} == {0: "abort", 1: "abort"}
    assert last.completion_tokens < 800
    assert vllm_engine.num_running() == 0
    # the engine keeps serving after an abort
    assert (
        finish(
            await run(
                vllm_engine, "abort-2", chat_request(max_completion_tokens=2, ignore_eos=True)
            )
        )
        == "length"
    )


async def test_abort_right_after_submitting(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(max_completion_tokens=400, ignore_eos=True)
    task = asyncio.create_task(run(vllm_engine, "abort-early", req))
    await asyncio.sleep(0)  # the request is inside the engine, maybe not yet admitted
    await vllm_engine.abort("abort-early")
    steps = await task
    assert steps[-1].finished and steps[-1].choices[-1].finish_reason == "abort"
    assert steps[-1].completion_tokens < 400
    assert vllm_engine.num_running() == 0


async def test_abort_unknown_request_is_harmless(vllm_engine: Any) -> None:
    await vllm_engine.abort("never-started")
    assert vllm_engine.num_running() == 0


async def test_concurrent_requests_are_counted_and_batched(
    vllm_engine: Any, chat_request: Build
) -> None:
    req = chat_request(max_completion_tokens=64, ignore_eos=True)
    seen: list[int] = []

    async def one(i: int) -> list[EngineStep]:
        out = []
        async for step in vllm_engine.generate(f"many-{i}", req, None):
            seen.append(vllm_engine.num_running())
            out.append(step)
        return out

    results = await asyncio.gather(*(one(i) for i in range(16)))
    assert all(r[-1].completion_tokens == 64 for r in results)
    assert max(seen) > 1
    assert vllm_engine.num_running() == 0


async def test_prompt_too_long_is_invalid_request(vllm_engine: Any, chat_request: Build) -> None:
    long = " ".join(f"word{i}" for i in range(600))
    with pytest.raises(InvalidRequest) as err:
        await run(vllm_engine, "long-1", chat_request(messages=[{"role": "user", "content": long}]))
    assert err.value.param == "messages"
    with pytest.raises(InvalidRequest) as err:
        await run(vllm_engine, "long-2", chat_request(max_completion_tokens=600))
    assert err.value.param == "max_completion_tokens"
    assert vllm_engine.num_running() == 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"100000": 5}}, "logit_bias"),
        ({"stop_token_ids": [100000]}, "stop_token_ids"),
    ],
)
async def test_token_ids_outside_the_vocabulary(
    vllm_engine: Any, chat_request: Build, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        await run(vllm_engine, "vocab-1", chat_request(**fields))
    assert err.value.param == param


async def test_continue_final_message(vllm_engine: Any, chat_request: Build) -> None:
    req = chat_request(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The ans"}],
        continue_final_message=True,
        max_completion_tokens=4,
        ignore_eos=True,
    )
    steps = await run(vllm_engine, "cont-1", req)
    assert steps[-1].completion_tokens == 4 and finish(steps) == "length"


async def test_a_cut_answer_is_continued_as_the_assistants_message(
    vllm_engine: Any, chat_request: Build
) -> None:
    # a stream cut after some tokens is queued again with its text as the assistant's
    # message to continue (protocol/continuation.py): the chat template renders the original
    # prompt, its generation prompt, then that text and nothing after it (no end of turn, no
    # new assistant header), and the engine writes the rest of the budget. (Token for token
    # the same answer only where the text tokenizes back to the same ids: the tiny model's
    # random bytes do not, docs/reliability.md.)
    from berth.protocol.chat import parse_chat_request
    from berth.protocol.continuation import continued_request
    from berth.workers.engine.chat import render_prompt_text

    body = chat_request(max_completion_tokens=16, ignore_eos=True, temperature=0, seed=3)
    whole = await run(vllm_engine, "whole-1", body)
    assert whole[-1].completion_tokens == 16
    cut_after = 6  # steps, one token each
    sent = "".join(c.content for s in whole[:cut_after] for c in s.choices)
    done = whole[cut_after - 1].completion_tokens
    queued = body.model_dump(mode="json", exclude_none=True)
    again = parse_chat_request(continued_request(queued, sent, done))
    tokenizer = vllm_engine._tokenizer
    assert render_prompt_text(tokenizer, again) == render_prompt_text(tokenizer, body) + sent
    rest = await run(vllm_engine, "whole-1-continued", again)
    assert rest[-1].completion_tokens == 16 - done
    assert finish(rest) == "length"


# --- text completions (/v1/completions): the prompt goes in as it is -----------------------


def completion(**fields: Any) -> Any:
    from berth.protocol.completion import parse_completion_request

    return parse_completion_request({"model": "berth-tiny", "prompt": "Hello there", **fields})


async def test_text_completion_prompt_is_tokenized_without_a_chat_template(
    vllm_engine: Any, tiny_tokenizer: Any, chat_request: Build
) -> None:
    steps = await run(vllm_engine, "cmpl-text", completion(max_tokens=5, temperature=0))
    assert finish(steps) == "length" and steps[-1].completion_tokens == 5
    # as vLLM's server tokenizes a completion's prompt: the text alone, special tokens added
    assert steps[-1].prompt_tokens == len(tiny_tokenizer.encode("Hello there"))
    chat = await run(
        vllm_engine,
        "cmpl-chat",
        chat_request(messages=[{"role": "user", "content": "Hello there"}], max_tokens=5),
    )
    assert chat[-1].prompt_tokens > steps[-1].prompt_tokens  # the template's own tokens


async def test_text_completion_of_token_ids_equals_that_of_their_text(
    vllm_engine: Any, tiny_tokenizer: Any
) -> None:
    ids = tiny_tokenizer.encode("Hello there")
    by_text = await run(vllm_engine, "cmpl-t", completion(max_tokens=6, temperature=0))
    by_ids = await run(vllm_engine, "cmpl-i", completion(prompt=ids, max_tokens=6, temperature=0))
    assert text(by_ids) == text(by_text) and by_ids[-1].prompt_tokens == len(ids)


async def test_text_completion_echo_logprobs_n_and_stop(vllm_engine: Any) -> None:
    echo = await run(vllm_engine, "cmpl-echo", completion(max_tokens=3, echo=True))
    assert text(echo).startswith("Hello there") and len(text(echo)) > len("Hello there")
    scored = await run(vllm_engine, "cmpl-lp", completion(max_tokens=4, logprobs=2))
    entries = [e for s in scored for c in s.choices for e in c.logprobs or []]
    assert len(entries) == 4 and all(len(e["top_logprobs"]) == 2 for e in entries)
    two = await run(vllm_engine, "cmpl-n", completion(max_tokens=3, n=2, temperature=1, seed=1))
    assert finish(two, 0) == finish(two, 1) == "length" and two[-1].completion_tokens == 6
    first = text(await run(vllm_engine, "cmpl-s0", completion(max_tokens=8, temperature=0)))
    stop = first[2:4]
    stopped = await run(vllm_engine, "cmpl-s", completion(max_tokens=8, temperature=0, stop=stop))
    assert stop not in text(stopped) and finish(stopped) == "stop"


async def test_text_completion_checks_name_its_fields(vllm_engine: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await run(vllm_engine, "cmpl-v", completion(prompt=[10**9]))
    assert caught.value.param == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        await run(vllm_engine, "cmpl-m", completion(max_tokens=10**6))
    assert caught.value.param == "max_tokens"
    long = "word " * (vllm_engine.max_model_len + 10)
    with pytest.raises(InvalidRequest) as caught:
        await run(vllm_engine, "cmpl-l", completion(prompt=long))
    assert caught.value.param == "prompt"


async def test_text_completion_regex_constraint(vllm_engine: Any) -> None:
    steps = await run(vllm_engine, "cmpl-re", completion(regex="[ab]{4}", max_tokens=10))
    assert re.fullmatch("[ab]{4}", text(steps))
