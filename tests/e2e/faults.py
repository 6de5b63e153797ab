"""Load and outcome counting for the fault tests: streamed chats and jobs run against a real
stack while a test kills something; each stream and job is then classified by how it ended.

A stream is whole when it ended with exactly one terminal chunk (a finish_reason with the
whole text, or one error chunk) and ``[DONE]``; a clean refusal is an HTTP error answer
with an OpenAI error body (a 503 while Redis is away). Anything else (a lost connection,
a finish with a cut text, two terminal chunks, no terminal chunk, no answer at all) is a
defect the tests count. ``benchmarks/faults.py`` counts with the same functions.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from berth.protocol import keys
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


def stream_outcome(
    client: httpx.Client,
    body: dict[str, Any],
    expected: str,
    on_first_text: Callable[[], None] | None = None,
) -> str:
    """One streamed chat, by what its client saw: ``finished`` (one finish, ``[DONE]``, and
    exactly ``expected``), ``truncated`` (a normal finish with any other text), ``error:<code>``
    (one error chunk, then ``[DONE]``), ``refused:<status>`` (an HTTP error answer with an
    OpenAI error body), ``refused:connect`` (no API listening), or a defect's name: ``hung``
    (no byte within the client's timeout), ``connection-lost:<error>``, ``bad-refusal:<status>``,
    ``bad-ending:<terminal chunks>:<[DONE] seen>``."""
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                answer.read()
                try:
                    answer.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    return f"bad-refusal:{answer.status_code}"
                return f"refused:{answer.status_code}"
            terminals: list[str] = []
            text: list[str] = []
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
                    content = choice.get("delta", {}).get("content") or ""
                    if content and on_first_text is not None and not any(text):
                        on_first_text()
                    text.append(content)
                    if choice.get("finish_reason"):
                        terminals.append("finished")
            if len(terminals) != 1 or not done:
                return f"bad-ending:{terminals}:{done}"
            if terminals[0] == "finished" and "".join(text) != expected:
                return "truncated"
            return terminals[0]
    except httpx.TimeoutException:
        return "hung"
    except httpx.ConnectError:
        return "refused:connect"
    except httpx.HTTPError as err:
        return f"connection-lost:{type(err).__name__}"


def job_records(url: str, job_ids: list[str], timeout_s: float = HANG_S) -> dict[str, Any]:
    """Each job's record (None: not found), once all ended or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            for job_id in job_ids:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = client.get(f"/v1/jobs/{job_id}")
                    records[job_id] = answer.json() if answer.status_code == 200 else None
            ended = [r for r in records.values() if r and r.get("status") in JOB_TERMINAL]
            if len(ended) == len(job_ids) or time.monotonic() > deadline:
                return records
            time.sleep(0.3)


def job_events(store: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The job's event stream (``keys.job_events``), read again while Redis is away."""
    for _ in range(20):
        with contextlib.suppress(redis.RedisError):
            entries: Any = store.xrange(keys.job_events(job_id))
            return [json.loads(fields[b"e"]) for _, fields in entries]
        time.sleep(0.5)
    return []


def job_kind(record: Any, events: list[dict[str, Any]], expected: str) -> tuple[str, str]:
    """(kind, failure reason) of one job: ``twice`` (two ``started`` events of one attempt),
    ``lost`` (no record, or not ended), ``once`` (succeeded with ``expected``), ``failed``."""
    starts = Counter(e.get("attempt", 0) for e in events if e["type"] == "started")
    if starts and max(starts.values()) > 1:
        return "twice", ""
    if record is None or record.get("status") not in JOB_TERMINAL:
        return "lost", ""
    if record["status"] == "succeeded":
        text = record["result"]["choices"][0]["message"].get("content")
        return ("once", "") if text == expected else ("failed", "truncated result")
    error = record.get("error") or {}
    return "failed", f"{record['status']}:{error.get('code')}"


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
                    body = _body(self.tokens, True)
                    outcome = stream_outcome(client, body, fake_text(self.tokens))
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
        """Job status -> jobs, once every job ended or ``HANG_S`` passed."""
        records = job_records(self.url, self.jobs)
        return Counter((records.get(i) or {}).get("status", "missing") for i in self.jobs)

    def job_kinds(self, store: redis.Redis) -> Counter[str]:
        """once / failed / lost / twice -> jobs (``job_kind``)."""
        records = job_records(self.url, self.jobs)
        expected = fake_text(self.tokens)
        return Counter(
            job_kind(records.get(i), job_events(store, i), expected)[0] for i in self.jobs
        )


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
