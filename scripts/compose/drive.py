"""What a user does with the running stack, through the official `openai` client.

Each check raises CheckFailed with what it saw; the tiny model's text is gibberish, so the
checks are about the serving path: tokens arrive, streams end once, adapters and jobs and
batches complete.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai

MODEL = "berth-tiny"
ADAPTER = "tiny-lora-a"
PROMPT = [{"role": "user", "content": "Say something about the sea."}]


class CheckFailed(Exception):
    """The running stack did not answer as a user expects."""


def _check(condition: bool, what: str, seen: object) -> None:
    if not condition:
        raise CheckFailed(f"{what}; got {seen!r}")


def client(url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=120, max_retries=0)


def models(api: openai.OpenAI) -> None:
    served = {m.id for m in api.models.list().data}
    _check({MODEL, ADAPTER} <= served, f"/v1/models lists {MODEL} and {ADAPTER}", served)


def streamed_chat(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=PROMPT,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finishes, usage = [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    _check("".join(text) != "", "a streamed chat yields text", text)
    _check(finishes == ["length"], "the stream ends once, at max_tokens", finishes)
    _check(usage is not None and usage.completion_tokens == 16, "a usage chunk", usage)


def adapter_chat(api: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"messages": PROMPT, "max_tokens": 12, "temperature": 0}
    base = api.chat.completions.create(model=MODEL, **kwargs)
    lora = api.chat.completions.create(model=ADAPTER, **kwargs)
    choice = lora.choices[0]
    _check(choice.finish_reason == "length", "the adapter's answer runs to max_tokens", lora)
    _check(lora.usage is not None and lora.usage.completion_tokens == 12, "its usage", lora.usage)
    # random adapter weights move the greedy answer away from the base model's
    _check(
        choice.message.content != base.choices[0].message.content,
        "the adapter changes the answer",
        (choice.message.content, base.choices[0].message.content),
    )


def job(url: str, api_key: str, timeout_s: float = 120) -> None:
    """An asynchronous job (berth's /v1/jobs): 202, then polled to its stored result."""
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 5}
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, timeout=30, headers=auth) as http:
        answer = http.post("/v1/jobs", json=body)
        _check(answer.status_code == 202, "POST /v1/jobs answers 202", answer.text)
        job_id = answer.json()["id"]
        deadline = time.monotonic() + timeout_s
        while (record := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            _check(time.monotonic() < deadline, f"job {job_id} ends in {timeout_s} s", record)
            time.sleep(0.5)
    _check(record["status"] == "succeeded", "the job succeeds", record)
    _check(record["result"]["usage"]["completion_tokens"] == 5, "its result", record["result"])


def batch(api: openai.OpenAI, n: int = 3, timeout_s: float = 180) -> None:
    lines = [
        {
            "custom_id": f"task-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": PROMPT, "max_tokens": 4},
        }
        for i in range(n)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = api.files.create(file=("input.jsonl", data), purpose="batch")
    started = api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + timeout_s
    while (done := api.batches.retrieve(started.id)).status in ("validating", "in_progress"):
        _check(time.monotonic() < deadline, f"the batch ends in {timeout_s} s", done)
        time.sleep(0.5)
    _check(done.status == "completed" and done.output_file_id is not None, "completed", done)
    assert done.output_file_id is not None
    output = [json.loads(x) for x in api.files.content(done.output_file_id).text.splitlines()]
    ids = [line["custom_id"] for line in output]
    _check(ids == [f"task-{i}" for i in range(n)], "one output line per input, in order", ids)
    codes = [line["response"]["status_code"] for line in output]
    _check(codes == [200] * n, "every line answered", output)


def serves(url: str, api_key: str) -> None:
    """One short chat: the stack answers after a fault."""
    answer = client(url, api_key).chat.completions.create(
        model=MODEL,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=4,
    )
    _check(answer.choices[0].finish_reason == "length", "a chat completes", answer)
