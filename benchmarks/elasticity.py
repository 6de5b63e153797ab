"""Elasticity: what a pool that scales with its queue costs the clients. One script, one
section per question; each section starts its own store and roles as real processes.

    python -m benchmarks.elasticity                          # every section, fake engine
    python -m benchmarks.elasticity --sections cold-start --engine tiny --rounds 3

Sections:

* ``cold-start``: a model the catalog declares, with no worker (scaled to zero). A streamed
  chat is sent, and the model's worker is started at that moment (as KEDA would on the
  first queued request, without its polling interval). The time to the first token splits
  into the worker's start and model load (from its start until it is ready: its first
  heartbeat is in Redis and its Celery consumer waits on its queue) and berth's own part
  (from then until the first token: the scheduler noticing the worker, dispatch, the
  engine's first step, the way back). Beside
  each cold round, a warm one on the same stack (the worker up) gives the plain time to
  first token of that engine; rounds alternate cold and warm on fresh stacks. Target
  (issue 23): berth's part at most 1 s.

Raw figures go to ``benchmarks/results/elasticity-<engine>-<timestamp>.json``, one key per
section.

Engines: ``fake`` (the deterministic fake engine: the worker's start is Python and Celery
only) or ``tiny`` (vLLM's CPU build with the generated tiny model: a real load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.serve import output_to
from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, free_port
from tests.valkey import Valkey

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = "elastic-model"
# berth's own part of a cold start may take this long (issue 23)
BERTH_PART_TARGET_S = 1.0
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 4,
    "stream": True,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def engine_env(engine: str) -> dict[str, str]:
    if engine == "fake":
        return dict(FAKE_ENGINE)
    return {"VLLM_CPU_KVCACHE_SPACE": "1"}


def first_token_s(url: str, sent: float) -> float:
    """Seconds from ``sent`` until the stream's first content chunk (the stream is read to
    its end: every stream ends with one terminal event)."""
    first = None
    with (
        httpx.Client(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/chat/completions", json=BODY) as answer,
    ):
        answer.raise_for_status()
        for line in answer.iter_lines():
            if first is None and line.startswith("data:") and '"content"' in line:
                first = time.monotonic()
    assert first is not None, "the stream carried no token"
    return first - sent


def wait_for(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.005) -> float:
    """The monotonic time ``condition`` first held, polled every ``every_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every_s)
    return time.monotonic()


# -- cold start -----------------------------------------------------------------------------


@dataclass
class ColdStart:
    """One round: a cold request beside a warm one on the same stack. The worker is ready
    when it is both in the registry (its first heartbeat) and consuming its Celery queue;
    berth's part runs from then to the first token, and splits into the scheduler's (first
    heartbeat to the request's ``dispatched`` event), the worker's pickup (from the later
    of dispatch and consuming to its ``started`` event) and the rest (to the first token
    at the client: the engine's first step and the way back)."""

    worker_start_s: float
    berth_part_s: float
    to_dispatch_s: float
    to_started_s: float
    to_token_s: float
    cold_ttft_s: float
    warm_ttft_s: float


class EventTimes:
    """When each event type was first published to any API process (each message: one
    engine step's events for that process)."""

    def __init__(self, store: redis.Redis) -> None:
        self.first: dict[str, float] = {}
        self._pubsub = store.pubsub()
        self._pubsub.psubscribe(keys.delivery_channel("*"))
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        for message in self._pubsub.listen():
            if message["type"] != "pmessage":
                continue
            now = time.monotonic()
            for event in json.loads(message["data"]):
                kind = event.get("type", "")
                self.first.setdefault(kind, now)
                if kind in ("finished", "error", "cancelled"):
                    return

    def close(self) -> None:
        self._thread.join(10)
        self._pubsub.close()


@dataclass
class ColdStarts:
    rounds: list[ColdStart] = field(default_factory=list)

    def report(self, engine: str) -> bool:
        """Print the figures; True when the target is met."""

        def median(name: str) -> float:
            return statistics.median(getattr(r, name) for r in self.rounds)

        rows = [
            ("worker start and model load (registered and consuming)", "worker_start_s"),
            ("berth's part (worker ready to first token)", "berth_part_s"),
            ("- scheduler: first heartbeat to dispatch", "to_dispatch_s"),
            ("- worker: dispatched and consuming to started", "to_started_s"),
            ("- engine and relay: started to first token", "to_token_s"),
            ("cold request: time to first token", "cold_ttft_s"),
            ("warm request, same stack: time to first token", "warm_ttft_s"),
        ]
        print(f"\n## cold start ({engine} engine, {len(self.rounds)} rounds, medians)\n")
        print("| part | seconds |")
        print("|---|---|")
        for label, name in rows:
            print(f"| {label} | {median(name):.3f} |")
        worst = max(r.berth_part_s for r in self.rounds)
        print(
            f"\nberth's part, worst round: {worst:.3f} s; "
            f"above a warm request: {median('berth_part_s') - median('warm_ttft_s'):.3f} s"
        )
        met = worst <= BERTH_PART_TARGET_S
        print(f"target berth's part <= {BERTH_PART_TARGET_S:g} s: {'met' if met else 'MISSED'}")
        return met


def cold_start_round(engine: str, log_dir: Path, start_timeout_s: float) -> ColdStart:
    with tempfile.TemporaryDirectory(prefix="berth-elasticity-") as tmp:
        catalog = Path(tmp) / "models.yaml"
        catalog.write_text(f"models:\n  - name: {MODEL}\n")
        valkey = Valkey(Path(tmp), free_port())
        valkey.start()
        try:
            env = {"BERTH_MODELS_FILE": str(catalog), **engine_env(engine)}
            with RunningStack(valkey.url, env=env) as stack:
                for role in ("scheduler", "api"):
                    with output_to(log_dir / f"{role}.log"):
                        stack.start(role)
                stack.wait_ready(start_timeout_s, workers=0)
                return _cold_then_warm(stack, log_dir, start_timeout_s)
        finally:
            valkey.stop()


def _consuming(store: redis.Redis) -> bool:
    """Whether the worker's Celery consumer waits on its queue: kombu's Redis transport
    blocks in BRPOP (no other role of the stack sends it)."""
    return any(client.get("cmd") == "brpop" for client in store.client_list())


def _cold_then_warm(stack: RunningStack, log_dir: Path, start_timeout_s: float) -> ColdStart:
    store = redis.Redis.from_url(stack.redis_url)
    worker_key = keys.worker_key("elastic-w1")
    events = EventTimes(store)
    result: dict[str, float] = {}
    sent = time.monotonic()
    request = threading.Thread(
        target=lambda: result.setdefault("ttft", first_token_s(stack.url, sent)), daemon=True
    )
    request.start()
    # the request is queued (the stream holds it) before the worker starts, as with KEDA
    wait_for(lambda: bool(store.xlen(keys.ingress_stream(MODEL))), 30)
    started = time.monotonic()
    with output_to(log_dir / "worker.log"):
        stack.start("worker", BERTH_WORKER_ID="elastic-w1", BERTH_SERVED_MODEL_NAME=MODEL)
    seen: dict[str, float] = {}

    def worker_ready() -> bool:
        now = time.monotonic()
        if "heartbeat" not in seen and store.exists(worker_key):
            seen["heartbeat"] = now
        if "consuming" not in seen and _consuming(store):
            seen["consuming"] = now
        return len(seen) == 2

    wait_for(worker_ready, start_timeout_s)
    # the worker can take work once it is in the registry and its consumer waits
    up = max(seen.values())
    request.join(start_timeout_s)
    assert "ttft" in result, "the cold request did not finish"
    first = sent + result["ttft"]
    events.close()
    warm = first_token_s(stack.url, time.monotonic())
    store.close()
    dispatched, began = events.first["dispatched"], events.first["started"]
    return ColdStart(
        worker_start_s=up - started,
        berth_part_s=first - up,
        to_dispatch_s=dispatched - seen["heartbeat"],
        to_started_s=began - max(dispatched, seen["consuming"]),
        to_token_s=first - began,
        cold_ttft_s=result["ttft"],
        warm_ttft_s=warm,
    )


def cold_start(args: argparse.Namespace) -> tuple[bool, Any]:
    runs = ColdStarts()
    for index in range(args.rounds):
        log_dir = args.log_dir / f"cold-start-{index}"
        log_dir.mkdir(parents=True, exist_ok=True)
        log(f"cold start: round {index + 1}/{args.rounds} (role logs in {log_dir})")
        runs.rounds.append(cold_start_round(args.engine, log_dir, args.start_timeout_s))
        log(f"  {runs.rounds[-1]}")
    return runs.report(args.engine), [asdict(r) for r in runs.rounds]


# every section: a name and the function that runs it and prints its figures; it returns
# whether its targets were met and its raw figures
SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[bool, Any]]] = {
    "cold-start": cold_start,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--engine", choices=("fake", "tiny"), default="fake")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start-timeout-s", type=float, default=300.0)
    default_logs = Path(tempfile.gettempdir()) / "berth-elasticity"
    parser.add_argument("--log-dir", type=Path, default=default_logs)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    results = {name: SECTIONS[name](args) for name in chosen}
    met = all(ok for ok, _ in results.values())
    print(f"\ntargets: {'all met' if met else 'some MISSED'}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"elasticity-{args.engine}-{datetime.now():%Y%m%d-%H%M%S}.json"
    figures = {name: {"met": ok, "rounds": raw} for name, (ok, raw) in results.items()}
    out.write_text(json.dumps({"engine": args.engine, "sections": figures}, indent=1) + "\n")
    log(f"raw figures in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
