"""Load and outcome counting for the fault tests: streamed chats and jobs run against a real
stack while a test kills something; each stream and job is then classified by how it ended.

A stream is whole when it ended with exactly one terminal chunk (a finish_reason, or one
error chunk) and ``[DONE]``; a clean refusal is an HTTP error answer with an OpenAI error
body (a 503 while Redis is away). Anything else (a lost connection, two terminal chunks,
no terminal chunk, no answer at all) is a defect the tests count.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from berth.workers.engine.fake import WORDS

MODEL = "fake-model"
JOB_TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# a stream or job not ended after this long counts as hung (a test bound, not a figure)
HANG_S = 90.0


def fake_text(tokens: int) -> str:
    """The fake engine's whole answer to a request for ``tokens`` tokens (no seed, no stop):
    a client that got anything else got a truncated or garbled answer."""
    return "".join(WORDS[k % len(WORDS)] + " " for k in range(tokens))


def _body(tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": stream,
    }


def stream_outcome(client: httpx.Client, tokens: int) -> str:
    """One streamed chat: finished / error:<code> / refused:<status> / a defect's name."""
    try:
        with client.stream("POST", "/v1/chat/completions", json=_body(tokens, True)) as answer:
            if answer.status_code != 200:
                answer.read()
                try:
                    answer.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    return f"bad-refusal:{answer.status_code}"
                return f"refused:{answer.status_code}"
            terminals: list[str] = []
            done = False
            for line in answer.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    terminals.append(f"error:{chunk['error'].get('code')}")
                for choice in chunk.get("choices", []):
                    if choice.get("finish_reason"):
                        terminals.append("finished")
            if len(terminals) != 1 or not done:
                return f"bad-ending:{terminals}:{done}"
            return terminals[0]
    except httpx.TimeoutException:
        return "hung"
    except httpx.HTTPError as err:
        return f"connection-lost:{type(err).__name__}"


@dataclass
class Load:
    """Streams sent by a few client threads, one after another, until ``stop``; and jobs."""

    url: str
    streams: int = 24
    concurrency: int = 8
    tokens: int = 40
    outcomes: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def start(self, jobs: int = 8) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(jobs):
                answer = client.post("/v1/jobs", json=_body(self.tokens, False))
                answer.raise_for_status()
                self.jobs.append(answer.json()["id"])
        left = iter(range(self.streams))
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=self.url, timeout=HANG_S) as client:
                while True:
                    with lock:
                        if next(left, None) is None:
                            return
                    outcome = stream_outcome(client, self.tokens)
                    with lock:
                        self.outcomes.append(outcome)

        self.threads = [threading.Thread(target=client_loop) for _ in range(self.concurrency)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> Counter[str]:
        for thread in self.threads:
            thread.join(HANG_S * 2)
        assert not any(t.is_alive() for t in self.threads), "a client thread never returned"
        return Counter(self.outcomes)

    def job_outcomes(self) -> Counter[str]:
        deadline = time.monotonic() + HANG_S
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while True:
                states = [client.get(f"/v1/jobs/{i}").json()["status"] for i in self.jobs]
                if all(s in JOB_TERMINAL for s in states) or time.monotonic() > deadline:
                    return Counter(states)
                time.sleep(0.3)


def defects(outcomes: Counter[str]) -> dict[str, int]:
    """Outcomes no client may see: anything but finished, one error event, or a clean 503."""
    ok = ("finished", "error:", "refused:503")
    return {k: n for k, n in outcomes.items() if not k.startswith(ok)}


def served_again(url: str, timeout_s: float = HANG_S) -> bool:
    """Whether a new request is answered (200, whole) before ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                answer = client.post("/v1/chat/completions", json=_body(4, False))
                if answer.status_code == 200:
                    return True
            time.sleep(0.3)
    return False
