"""Faults under load: one part of a running stack killed with SIGKILL at a time, and what the
clients saw. Real roles (API, scheduler, workers as processes), a real Valkey with AOF (or a
Sentinel set: primary, replica, three sentinels), the fake engine by default.

    python -m benchmarks.faults                              # every fault, fake engine
    python -m benchmarks.faults --faults redis-restart,api   # some of them
    python -m benchmarks.faults --engine real --faults worker-restart,redis-restart
    python -m benchmarks.faults --faults worker-restart,worker-gone,worker-drain  # worker rows

Per fault: a fresh store and stack; jobs submitted, then streamed chats sent by client
threads one after another; ``--kill-at`` seconds in, the part is killed with SIGKILL and (for
the API, the scheduler, a worker restarted under its id and Redis) started again
``--down-s`` later. Each stream is classified: whole (one finish, ``[DONE]``, the text the
engine writes for it), ended with one error event, connection lost (the API died holding
it), hung (no event for ``--hang-s``), truncated but "finished" (a normal finish with a
text that is not the whole answer), other (anything else). A refused stream (an HTTP error
answer, e.g. a 503 while Redis is away; or no API listening) is sent again after 0.2 s, as
a client with retries would; refusals are counted apart, and a stream refused for
``--hang-s`` is "never served". Each job:
succeeded exactly once (one ``started`` event per attempt, and its whole text), failed with
a reason, lost (no record, or not ended after ``--hang-s``), run twice (two ``started``
events of one attempt). "Served again": seconds from the end of the fault (the part started
again; Redis accepting connections; the new primary promoted; for a worker gone for good,
the kill) until a new request is answered, probed every 0.2 s.

The fake engine's answer is deterministic (``tests.e2e.faults.fake_text``); with the real
engine the reference is a non-streamed greedy answer taken before the fault.

The worker rows: ``worker-restart`` (w1 killed, started again under its id), ``worker-gone``
(w1 killed, w2 takes over) and ``worker-drain`` (a rolling update under load: w2 started,
then w1 scaled down with SIGTERM and a ``--drain-s`` shorter than a stream, so what it
cannot finish is handed back and continues on w2). Their "cut or error" column counts the
streams cut or ended with an error event, and "continued" the requests the API queued
again to go on from their last token (its ``berth_api_requests_requeued_total{continued=
"yes"}``): the cuts the clients did not see.

Targets (issue 10): 0 hung, 0 truncated-as-finished, 0 jobs lost or run twice, served again
within 5 s; (issue 23) on the worker rows, 0 streams cut or ended with an error. A missed
target is printed as such; the exit status is non-zero only when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.serve import output_to
from berth.plumbing.redisconn import sync_redis_client
from tests.e2e.faults import (
    fake_text,
    job_events,
    job_kind,
    job_records,
    stream_outcome,
)
from tests.sentinel import sentinel_set
from tests.stack import RunningStack, free_port
from tests.valkey import Valkey

FAULTS = (
    "api",
    "scheduler",
    "worker-restart",
    "worker-gone",
    "redis-restart",
    "sentinel-failover",
    "worker-drain",
)
# a worker killed, restarted or scaled down: no stream may be cut or end with an error
WORKER_FAULTS = frozenset({"worker-restart", "worker-gone", "worker-drain"})
# the stream kinds a client sees as a cut: an error event, a lost or broken stream
CUT_KINDS = ("error", "lost", "hung", "truncated", "other", "never served")
STREAM_KINDS = ("whole", "error", "lost", "hung", "truncated", "other", "never served")
# a client refused (an HTTP error answer, or no API listening) waits this long and sends the
# same stream again, as a client with retries would; the refusals are counted apart
RETRY_S = 0.2
JOB_KINDS = ("once", "failed", "lost", "twice")
SERVED_TARGET_S = 5.0
# a worker started again with the real engine loads its model first: its "served again"
# is that start-up (reported, held only to being served at all)
MODEL_LOAD_FAULTS = frozenset({"worker-restart"})

FAKE_ENV = {"BERTH_FAKE_ENGINE": "true", "BERTH_FAKE_TOKENS_PER_S": "40"}
STACK_ENV = {
    "BERTH_HEARTBEAT_TTL": "3",
    "BERTH_LIVENESS_CHECK_S": "0.5",
    "BERTH_MAINTENANCE_INTERVAL_S": "0.5",
    "BERTH_MODEL_GRACE_S": "0",
    "BERTH_REQUEST_TIMEOUT_S": "30",
}


def log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


@dataclass
class Engine:
    """Which engine the workers run and the request every client sends."""

    real: bool
    tokens: int
    model: str = "fake-model"
    expected: str = ""

    def env(self) -> dict[str, str]:
        if self.real:
            return {"BERTH_FAKE_ENGINE": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}
        return dict(FAKE_ENV)

    def body(self, stream: bool, tokens: int | None = None) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": "tell me about queues"}],
            "max_tokens": tokens or self.tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": stream,
        }


def stream_kind(client: httpx.Client, engine: Engine) -> tuple[str, str]:
    """The stream's kind in the table (``refused:...`` is retried by the caller), and what
    the e2e tests' classifier saw (``error:<code>`` for an error event)."""
    outcome = stream_outcome(client, engine.body(True), engine.expected)
    if outcome == "finished":
        return "whole", outcome
    if outcome.startswith("error:"):
        return "error", outcome
    if outcome.startswith("connection-lost:"):
        return "lost", outcome
    if outcome in ("truncated", "hung") or outcome.startswith("refused:"):
        return outcome, outcome
    return "other", outcome


@dataclass
class Run:
    """The load of one fault: streams from client threads, jobs, and the probe."""

    url: str
    engine: Engine
    streams: int
    concurrency: int
    hang_s: float
    kinds: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    # error code -> streams that ended with an error event of it
    errors: Counter[str] = field(default_factory=Counter)
    jobs: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def submit_jobs(self, count: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(count):
                answer = client.post("/v1/jobs", json=self.engine.body(False))
                answer.raise_for_status()
                self.jobs.append(answer.json()["id"])

    def start_streams(self) -> None:
        left = iter(range(self.streams))
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=self.url, timeout=self.hang_s) as client:
                while True:
                    with lock:
                        if next(left, None) is None:
                            return
                    give_up = time.monotonic() + self.hang_s
                    kind, seen = stream_kind(client, self.engine)
                    while kind.startswith("refused") and time.monotonic() < give_up:
                        with lock:
                            self.refusals[kind] += 1
                        time.sleep(RETRY_S)
                        kind, seen = stream_kind(client, self.engine)
                    with lock:
                        self.kinds.append("never served" if kind.startswith("refused") else kind)
                        if kind == "error":
                            self.errors[seen.removeprefix("error:")] += 1

        self.threads = [threading.Thread(target=client_loop) for _ in range(self.concurrency)]
        for thread in self.threads:
            thread.start()

    def finish_streams(self) -> Counter[str]:
        for thread in self.threads:
            thread.join()
        return Counter(self.kinds)

    def job_kinds(self, store: redis.Redis) -> tuple[Counter[str], Counter[str]]:
        """(kind -> jobs, failure reason -> jobs), once every job ended or ``hang_s`` passed."""
        records = job_records(self.url, self.jobs, self.hang_s)
        kinds: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for job_id in self.jobs:
            kind, reason = job_kind(
                records.get(job_id), job_events(store, job_id), self.engine.expected
            )
            kinds[kind] += 1
            if reason:
                reasons[reason] += 1
        return kinds, reasons


def served_after(url: str, engine: Engine, since: float, limit_s: float) -> float | None:
    """Seconds from ``since`` until a new request is answered whole (None: not in limit_s)."""
    with httpx.Client(base_url=url, timeout=15) as client:
        while time.monotonic() - since < limit_s:
            with contextlib.suppress(httpx.HTTPError):
                answer = client.post("/v1/chat/completions", json=engine.body(False, 4))
                if answer.status_code == 200:
                    return time.monotonic() - since
            time.sleep(0.2)
    return None


def direct_client(url: str) -> redis.Redis:
    """A synchronous client for reading records (through the sentinels when asked)."""
    return sync_redis_client(url, timeout_s=2)


@contextlib.contextmanager
def storage(fault: str) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """(url, kill, start again) of the store this fault runs on."""
    if fault == "sentinel-failover":
        with sentinel_set() as ha:

            def failover() -> None:
                ha.failover()

            yield ha.url, failover, lambda: None
        return
    with tempfile.TemporaryDirectory(prefix="berth-faults-") as tmp:
        valkey = Valkey(Path(tmp), free_port())
        valkey.start()
        try:
            yield valkey.url, valkey.kill, valkey.start
        finally:
            valkey.stop()


def _role(stack: RunningStack, role: str) -> Any:
    """The first started process of ``role``."""
    return next(proc for name, proc in stack.stack.processes if name == role)


def start_role(stack: RunningStack, role: str, log_dir: Path, **extra: str) -> None:
    """Start a role with its output in ``log_dir``, not among the figures."""
    with output_to(log_dir / f"{role}.log"):
        stack.start(role, **extra)


def kill_role(stack: RunningStack, role: str) -> None:
    """SIGKILL one role's process group and forget it (it is not expected to run)."""
    proc = _role(stack, role)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stack.stack.processes.remove((role, proc))


@dataclass
class Outcome:
    fault: str
    streams: Counter[str]
    refusals: Counter[str]
    errors: Counter[str]
    jobs: Counter[str]
    reasons: Counter[str]
    served_s: float | None
    exited: str | None
    real_engine: bool = False
    # requests continued from their last token after their worker died or handed them back
    continued: int = 0

    def verdicts(self) -> list[str]:
        missed = []
        if self.streams["hung"]:
            missed.append("hung streams")
        if self.streams["truncated"]:
            missed.append("truncated-as-finished")
        if self.streams["other"]:
            missed.append("malformed endings")
        if self.streams["never served"]:
            missed.append("streams never served")
        if self.jobs["lost"] or self.jobs["twice"]:
            missed.append("jobs lost or run twice")
        if self.served_s is None:
            missed.append("never served again")
        elif self.served_s > SERVED_TARGET_S and not (
            self.real_engine and self.fault in MODEL_LOAD_FAULTS
        ):
            missed.append(f"served again later than {SERVED_TARGET_S:.0f} s")
        if self.exited:
            missed.append(f"{self.exited} exited")
        if self.fault in WORKER_FAULTS and self.cut():
            missed.append("streams cut or ended with an error")
        return missed

    def cut(self) -> int:
        """Streams cut or ended with an error event."""
        return sum(self.streams[k] for k in CUT_KINDS)

    def as_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "streams": dict(self.streams),
            "refusals_retried": dict(self.refusals),
            "error_codes": dict(self.errors),
            "jobs": dict(self.jobs),
            "job_failures": dict(self.reasons),
            "served_again_s": self.served_s,
            "cut_or_error": self.cut() if self.fault in WORKER_FAULTS else None,
            "continued": self.continued,
            "role_exited": self.exited,
            "missed": self.verdicts(),
        }


def run_fault(fault: str, engine: Engine, args: argparse.Namespace) -> Outcome:
    log_dir = args.log_dir / fault
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"{fault}: starting the store and the stack (role logs in {log_dir})")
    with storage(fault) as (url, kill_store, start_store):
        env = STACK_ENV | engine.env()
        stack = RunningStack(url, env=env)
        with stack:
            drain = {"BERTH_DRAIN_S": str(args.drain_s)} if fault == "worker-drain" else {}
            start_role(stack, "worker", log_dir, BERTH_WORKER_ID="w1", **drain)
            workers = 1
            if fault == "worker-gone":
                start_role(stack, "worker", log_dir, BERTH_WORKER_ID="w2")
                workers = 2
            start_role(stack, "scheduler", log_dir)
            start_role(stack, "api", log_dir)
            stack.wait_ready(args.start_timeout_s, workers=workers)
            if engine.real and not engine.expected:
                engine.expected = _reference(stack.url, engine)
            run = Run(stack.url, engine, args.streams, args.concurrency, args.hang_s)
            run.submit_jobs(args.jobs)
            run.start_streams()
            time.sleep(args.kill_at)
            log(f"{fault}: kill")
            back = _inflict(fault, stack, kill_store, start_store, args.down_s, log_dir)
            log(f"{fault}: back; probing")
            served = served_after(stack.url, engine, back, args.hang_s)
            streams = run.finish_streams()
            with direct_client(url) as store:
                jobs, reasons = run.job_kinds(store)
            exited = stack.stack.dead()
            continued = requeued(stack.url, continued=True)
    return Outcome(
        fault,
        streams,
        run.refusals,
        run.errors,
        jobs,
        reasons,
        served,
        exited,
        engine.real,
        continued,
    )


def requeued(url: str, continued: bool) -> int:
    """The API's count of requests queued again (``continued``: to go on after a token);
    0 when the API cannot say (it was killed and started again: a new count)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0
    wanted = "yes" if continued else "no"
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "berth_api_requests_requeued"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("continued") == wanted
        )
    )


def _inflict(
    fault: str,
    stack: RunningStack,
    kill_store: Callable[[], None],
    start_store: Callable[[], None],
    down_s: float,
    log_dir: Path,
) -> float:
    """Kill the part (and start it again); returns when the fault ended (monotonic)."""
    if fault == "sentinel-failover":
        kill_store()  # returns once the replica is the primary
        return time.monotonic()
    if fault == "redis-restart":
        kill_store()
        time.sleep(down_s)
        start_store()
        return time.monotonic()
    if fault == "worker-gone":
        kill_role(stack, "worker")  # w1, the first started; w2 takes over
        return time.monotonic()
    if fault == "worker-drain":
        # a rolling update: w2 comes up (and takes its share of the load), then w1 is
        # scaled down: SIGTERM to w1 alone (not its group: vLLM's engine process is the
        # worker's to stop); w2 takes what w1 hands back and every new request
        w1 = _role(stack, "worker")
        start_role(stack, "worker", log_dir, BERTH_WORKER_ID="w2")
        stack.wait_ready(180, workers=2)
        os.kill(w1.pid, signal.SIGTERM)
        since = time.monotonic()
        w1.wait()
        stack.stack.processes.remove(("worker", w1))
        log(f"worker-drain: w1 drained and exited (code {w1.returncode})")
        return since
    role = "worker" if fault == "worker-restart" else fault
    kill_role(stack, role)
    time.sleep(down_s)
    extra = {"BERTH_WORKER_ID": "w1"} if role == "worker" else {}
    start_role(stack, role, log_dir, **extra)
    return time.monotonic()


def _reference(url: str, engine: Engine) -> str:
    answer = httpx.post(f"{url}/v1/chat/completions", json=engine.body(False), timeout=120)
    answer.raise_for_status()
    return str(answer.json()["choices"][0]["message"]["content"])


def table(outcomes: list[Outcome]) -> str:
    head = (
        "| fault | streams whole | error event | conn. lost | hung | truncated as finished "
        "| other | never served | refusals retried | jobs once | jobs failed | jobs lost "
        "| jobs twice | served again (s) | cut or error (worker rows) | continued | targets |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for o in outcomes:
        served = "never" if o.served_s is None else f"{o.served_s:.1f}"
        missed = o.verdicts()
        cells = [o.fault, *(str(o.streams[k]) for k in STREAM_KINDS)]
        cells.append(str(sum(o.refusals.values())))
        cells += [str(o.jobs[k]) for k in JOB_KINDS]
        cells += [served, str(o.cut()) if o.fault in WORKER_FAULTS else "-", str(o.continued)]
        cells.append("met" if not missed else "MISSED: " + "; ".join(missed))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    add("--engine", choices=("fake", "real"), default="fake")
    add("--streams", type=int, default=120, help="streamed chats per fault")
    add("--concurrency", type=int, default=24, help="client threads sending streams")
    add("--tokens", type=int, default=48, help="completion tokens per request")
    add("--jobs", type=int, default=40, help="jobs per fault")
    add("--kill-at", type=float, default=2.0, help="seconds into the load")
    add("--down-s", type=float, default=2.0, help="seconds a killed part stays down")
    add("--hang-s", type=float, default=60.0, help="a stream or job silent this long hung")
    add(
        "--drain-s",
        type=float,
        default=0.5,
        help="worker-drain: w1's BERTH_DRAIN_S (shorter than a stream: some are handed back)",
    )
    add("--start-timeout-s", type=float, default=180.0)
    add("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "berth-faults")
    add("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    real = args.engine == "real"
    engine = Engine(real=real, tokens=args.tokens)
    if real:
        from berth.workers.tinymodel import ensure_tiny_model

        tiny = ensure_tiny_model()
        engine.model = tiny.name
    else:
        engine.expected = fake_text(args.tokens)
    outcomes = []
    for fault in args.faults.split(","):
        outcome = run_fault(fault, engine, args)
        log(f"{fault}: {outcome.as_json()}")
        outcomes.append(outcome)
    print(
        f"\nengine={args.engine} streams={args.streams} concurrency={args.concurrency} "
        f"tokens={args.tokens} jobs={args.jobs} kill_at={args.kill_at}s down={args.down_s}s "
        f"drain={args.drain_s}s"
    )
    print(table(outcomes))
    if args.json is not None:
        args.json.write_text(json.dumps([o.as_json() for o in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
