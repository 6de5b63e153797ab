"""``POST /v1/completions`` (OpenAI's legacy text completions) through the whole stack on the
fake engine, with the official ``openai`` client, and with vLLM's own benchmark client
(its default backend, ``vllm``, posts to /v1/completions). The same path runs on real
vLLM in test_serving.py."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import httpx
import openai
import pytest

from berth.workers.tinymodel import ensure_tiny_model
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "berth-tiny"


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        (
            "worker",
            {
                **FAKE_ENGINE,
                "BERTH_FAKE_TOKENS_PER_S": "500",
                "BERTH_SERVED_MODEL_NAME": MODEL,
                "BERTH_WORKER_ID": "w-1",
            },
        ),
        ("scheduler", {"BERTH_SCHEDULER_ID": "s-1"}),
        ("api", {}),
    )


@pytest.fixture
def client(stack: RunningStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def test_non_streamed_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time")
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.model == MODEL
    (choice,) = reply.choices
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert choice.logprobs is None
    # OpenAI's default max_tokens of 16
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_streamed_completion_with_usage_and_n(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=[1, 2, 3],
            max_tokens=4,
            n=2,
            temperature=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert set(texts) == {0, 1} and all(texts.values())
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == 3


def test_echo_stop_and_logprobs(client: openai.OpenAI) -> None:
    echoed = client.completions.create(model=MODEL, prompt=["Say it"], max_tokens=3, echo=True)
    assert echoed.choices[0].text.startswith("Say it")
    first = client.completions.create(model=MODEL, prompt="x", max_tokens=6).choices[0].text
    stop = first.split()[2]
    stopped = client.completions.create(model=MODEL, prompt="x", max_tokens=6, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].text
    scored = client.completions.create(model=MODEL, prompt="x", max_tokens=3, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and len(logprobs.tokens) == 3
    assert logprobs.text_offset == [0, len(logprobs.tokens[0]), sum(map(len, logprobs.tokens[:2]))]
    assert logprobs.top_logprobs is not None and all(len(t) == 2 for t in logprobs.top_logprobs)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "x", "max_tokens": 100_000}, "max_tokens"),  # the worker's check
        ({"prompt": [99_999_999]}, "prompt"),  # outside the vocabulary, from the worker
    ],
)
def test_refusals_are_400s_naming_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, **fields)
    assert caught.value.param == param, caught.value.message


def test_worker_refusal_of_a_stream_is_a_real_400(stack: RunningStack) -> None:
    answer = httpx.post(
        f"{stack.url}/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 100_000, "stream": True},
        timeout=30,
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_tokens"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")


def test_vllms_benchmark_client_with_its_default_backend(stack: RunningStack) -> None:
    """vLLM's ``vllm bench serve`` (``--backend vllm``: streamed /v1/completions, usage
    asked for) runs a handful of prompts against berth, every one of them succeeding."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    tiny = ensure_tiny_model()
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = ["--backend", "vllm", "--base-url", stack.url, "--endpoint", "/v1/completions"]
    argv += ["--model", MODEL, "--served-model-name", MODEL, "--tokenizer", str(tiny.path)]
    argv += ["--dataset-name", "random", "--num-prompts", "6", "--max-concurrency", "3"]
    argv += ["--random-input-len", "16", "--random-output-len", "8", "--ignore-eos"]
    argv += ["--disable-tqdm", "--seed", "1"]
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        result = main(args)
    assert result["completed"] == 6 and result["failed"] == 0, result.get("errors")
    assert result["total_output_tokens"] == 6 * 8
