"""LoRA thrash: throughput with adapter-affinity placement against first-come-first-served.

    python -m benchmarks.lora_thrash                      # simulated engines, ~5 min
    python -m benchmarks.lora_thrash --engine real        # two real vLLM CPU workers
    python -m benchmarks.lora_thrash --seconds 20 --repeats 1

8 adapters, at most 2 LoRAs per worker, 2 workers; requests for the 8 adapters are
interleaved at random (``--concurrency`` closed-loop clients, each sending its next
request as soon as the previous one finished, ``model`` = a random adapter, ``max_tokens``
16 with ``ignore_eos``). The same load runs once with ``BERTH_PLACEMENT=affinity`` (the
default) and once with ``BERTH_PLACEMENT=fcfs``; with ``--repeats`` the two alternate.

Everything but the engine is berth's real code in its own process: Valkey (embedded),
``berth api``, ``berth scheduler``, and per worker berth's worker runtime (``EngineHost``
with its heartbeat, event publisher and Celery worker). The load goes through the API with
httpx, as a client's would.

Engines (``--engine``):

- ``sim`` (default): :class:`benchmarks.sim.LoraSlotEngine` — continuous batching in
  steps of ``--step-ms`` (one token per running request per step), ``--max-num-seqs``
  requests per batch, at most ``max_loras`` (2) adapters in a batch (vLLM's rule), two
  LRU adapter slots, and ``--load-ms`` of engine time to put an adapter that is not in
  a slot into one (vLLM loads LoRA weights synchronously before the forward pass). Its
  ``stats()`` reports the slots, which the runtime puts in the heartbeat
  (``loaded_adapters``, ``max_loras``) for the scheduler's placement.
- ``real``: ``berth worker`` with vLLM's CPU build, the generated tiny model and 8 adapters
  generated for it with peft (``BERTH_MAX_LORAS=2``). On this 2-core machine two engines
  share the CPU with everything else; see docs/benchmarks.md for what that measures.

A measurement, not a test: it prints a table and the ratio, writes the raw figures to
``benchmarks/results/lora-thrash-<timestamp>.json``, and exits non-zero only when the
stack cannot be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.sim import (
    RESULTS_DIR,
    CpuMeter,
    RoleProcess,
    embedded_valkey,
    free_port,
    log,
    percentile,
    raise_priority,
    valkey_pid,
    wait_for_quiet,
)

TARGET_RATIO = 1.5
ADAPTER_PREFIX = "bench-lora-"
BASE_SIM = "sim-base"


# --------------------------------------------------------------------------- #
# adapters for the real engine
# --------------------------------------------------------------------------- #


def real_adapters(n: int) -> tuple[str, dict[str, str]]:
    """The tiny model's served name and ``n`` random LoRA adapters for it (generated once
    into the berth cache, like berth.workers.tinymodel's two)."""
    from berth.workers.tinymodel import (
        MODEL_NAME,
        default_cache_dir,
        ensure_tiny_model,
        write_random_adapter,
    )

    tiny = ensure_tiny_model()
    root = default_cache_dir() / "bench-lora-adapters-v1"
    names = {f"{ADAPTER_PREFIX}{i}": root / f"{ADAPTER_PREFIX}{i}" for i in range(n)}
    missing = [p for p in names.values() if not (p / "adapter_model.safetensors").exists()]
    if missing:
        log(f"generating {len(missing)} LoRA adapters into {root}")
        from transformers import LlamaConfig

        config = LlamaConfig.from_pretrained(tiny.path)
        for i, (_, path) in enumerate(names.items()):
            if path in missing:
                write_random_adapter(config, path, 1000 + i)
    return MODEL_NAME, {name: str(path) for name, path in names.items()}


# --------------------------------------------------------------------------- #
# the stack
# --------------------------------------------------------------------------- #


class Stack:
    def __init__(self, args: argparse.Namespace, url: str, logs: Path, adapters: dict[str, str]):
        self.args = args
        self.url = url
        self.logs = logs
        self.adapters = adapters
        self.port = free_port()
        self.workers: list[RoleProcess] = []
        self.schedulers: list[RoleProcess] = []
        self.api: RoleProcess | None = None
        self.stats_files: list[Path] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(
            os.environ,
            REDIS_URL=self.url,
            BERTH_PORT=str(self.port),
            BERTH_LOG_LEVEL="WARNING",
            VLLM_CPU_KVCACHE_SPACE="1",
            BERTH_ALLOW_ANONYMOUS="true",
        )
        env.update(extra)
        return env

    def start_workers(self, tag: str) -> None:
        for i in range(self.args.workers):
            extra = {
                "BERTH_WORKER_ID": f"bench-w{i}",
                "BERTH_MAX_LORAS": str(self.args.max_loras),
                "BERTH_ADAPTERS": json.dumps(self.adapters),
            }
            if self.args.capacity:
                extra["BERTH_CAPACITY"] = str(self.args.capacity)
            log_path = self.logs / f"worker{i}-{tag}.log"
            if self.args.engine == "sim":
                stats = self.logs / f"worker{i}-{tag}.stats.json"
                self.stats_files.append(stats)
                extra.update(BERTH_SERVED_MODEL_NAME=BASE_SIM, BENCH_STATS_FILE=str(stats))
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.sim",
                    "lora-worker",
                    f"--max-num-seqs={self.args.max_num_seqs}",
                    f"--step-s={self.args.step_ms / 1000}",
                    f"--load-s={self.args.load_ms / 1000}",
                ]
                self.workers.append(RoleProcess(argv, self.env(**extra), log_path))
            else:
                # one core each for the two engines' compute threads
                extra["VLLM_CPU_OMP_THREADS_BIND"] = str(i % (os.cpu_count() or 1))
                self.workers.append(RoleProcess.berth("worker", self.env(**extra), log_path))

    def start_control(self, policy: str, tag: str) -> None:
        for i in range(self.args.schedulers):
            log_path = self.logs / f"scheduler{i}-{tag}.log"
            env = self.env(BERTH_PLACEMENT=policy, BERTH_SCHEDULER_ID=f"bench-{tag}-{i}")
            self.schedulers.append(RoleProcess.berth("scheduler", env, log_path))
        if self.api is None:
            self.api = RoleProcess.berth("api", self.env(), self.logs / "api.log")

    def stop_control(self) -> None:
        for scheduler in self.schedulers:
            scheduler.stop()
        self.schedulers = []

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop(grace_s=30)
        self.workers = []

    def stop(self) -> None:
        self.stop_control()
        if self.api is not None:
            self.api.stop()
            self.api = None
        self.stop_workers()

    def processes(self) -> dict[str, RoleProcess]:
        out = {f"worker{i}": w for i, w in enumerate(self.workers)}
        for i, scheduler in enumerate(self.schedulers):
            out["scheduler" if i == 0 else f"scheduler{i}"] = scheduler
        if self.api is not None:
            out["api"] = self.api
        return out

    def check_alive(self) -> None:
        for label, proc in self.processes().items():
            if not proc.alive():
                raise RuntimeError(f"{label} exited:\n{proc.tail()}")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.api_url}/ready", timeout=2) as answer:
                    if json.load(answer).get("workers", 0) >= self.args.workers:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the stack was not ready after {timeout_s:.0f}s")


# --------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------- #


async def closed_loop(
    api_url: str,
    names: list[str],
    *,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    max_tokens: int,
    seed: int,
    t0: float,
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request as soon as the last ended,
    from monotonic time ``t0`` (shared by all client processes) for ``warmup_s`` +
    ``seconds``. Returns the raw requests that ended in the measured window, and errors."""
    import httpx

    rng = random.Random(seed)
    done: list[tuple[float, float, str, int]] = []  # (start, end, adapter, tokens)
    errors: Counter[str] = Counter()
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    measure_from, stop_at = t0 + warmup_s, t0 + warmup_s + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            adapter = rng.choice(names)
            body = {
                "model": adapter,
                "messages": [{"role": "user", "content": "Tell me a story about a boat."}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
            }
            start = time.monotonic()
            try:
                answer = await http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as err:
                errors[type(err).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            end = time.monotonic()
            if answer.status_code != 200:
                errors[f"HTTP {answer.status_code}: {answer.text[:120]}"] += 1
                await asyncio.sleep(0.1)
                continue
            usage = answer.json().get("usage") or {}
            done.append((start, end, adapter, int(usage.get("completion_tokens", 0))))

    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    # requests that finished inside the window (a closed loop keeps it full)
    window = [d for d in done if measure_from <= d[1] <= stop_at]
    return {"done": window, "errors": dict(errors)}


def _client_process(options: dict[str, Any], results: Any) -> None:
    """One load-generating process (``--client-procs``): a single Python process cannot
    keep more than ~100 clients going on this machine without becoming the bottleneck."""
    results.put(asyncio.run(closed_loop(**options)))


def load_figures(parts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    window = [d for part in parts for d in part["done"]]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    latencies = [end - start for start, end, _, _ in window]
    return {
        "completed": len(window),
        "rps": len(window) / seconds,
        "tok_s": sum(d[3] for d in window) / seconds,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p99_s": percentile(latencies, 0.99),
        "per_adapter": dict(sorted(Counter(d[2] for d in window).items())),
        "errors": dict(errors),
    }


async def probe(stack: Stack, names: list[str], max_tokens: int, timeout_s: float) -> None:
    """One request per adapter until each answers 200 (the API learns adapters from the
    workers' registrations; a real engine compiles on its first requests)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        for name in names:
            while True:
                body = {
                    "model": name,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": max_tokens,
                    "ignore_eos": True,
                }
                try:
                    answer = await http.post("/v1/chat/completions", json=body)
                except httpx.TimeoutException:
                    stack.check_alive()
                    raise
                if answer.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"adapter {name}: HTTP {answer.status_code} {answer.text}")
                stack.check_alive()
                await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def run_policy(
    args: argparse.Namespace, stack: Stack, names: list[str], policy: str, tag: str, seed: int
) -> dict[str, Any]:
    fresh_workers = args.engine == "sim" or not stack.workers
    if args.engine == "sim" and stack.workers:
        stack.stop_workers()
    if fresh_workers:
        stack.start_workers(tag)
    stack.start_control(policy, tag)
    stack.wait_ready(args.ready_timeout)
    asyncio.run(probe(stack, names, args.max_tokens, args.ready_timeout))
    pids = {label: p.target_pid() for label, p in stack.processes().items()}
    pids["valkey"] = valkey_pid(stack.url) or 0
    pids["client"] = os.getpid()
    asyncio.run(wait_for_quiet(pids, args.quiet_limit, args.quiet_timeout))
    # more load-generating processes (--client-procs) start now; all begin at t0
    procs = max(1, args.client_procs)
    t0 = time.monotonic() + (3.0 if procs > 1 else 0.0)
    shares = [args.concurrency // procs + (i < args.concurrency % procs) for i in range(procs)]
    options = [
        dict(
            api_url=stack.api_url,
            names=names,
            concurrency=share,
            warmup_s=args.warmup,
            seconds=args.seconds,
            max_tokens=args.max_tokens,
            seed=seed * 1000 + i,
            t0=t0,
        )
        for i, share in enumerate(shares)
    ]
    spawn = multiprocessing.get_context("spawn")
    results: Any = spawn.Queue()
    clients = [
        spawn.Process(target=_client_process, args=(o, results), daemon=True) for o in options[1:]
    ]
    for client in clients:
        client.start()
    pids.update({f"client{i + 1}": c.pid or 0 for i, c in enumerate(clients)})
    meter = CpuMeter(pids)
    log(f"{tag}: {args.concurrency} clients, {args.warmup:.0f}s warm-up + {args.seconds:.0f}s")
    engine_before: list[dict[str, Any]] = []
    engine_after: list[dict[str, Any]] = []
    cpu: dict[str, float] = {}

    async def measured() -> dict[str, Any]:
        async def window() -> None:
            # the engines write their counters every 0.5 s; CPU and counters cover the
            # measured window only, not the warm-up or the stragglers after it
            await asyncio.sleep(max(0.0, t0 - time.monotonic()) + args.warmup)
            meter.start()
            engine_before.extend(_read_stats(stack.stats_files))
            await asyncio.sleep(args.seconds)
            cpu.update(meter.stop())
            engine_after.extend(_read_stats(stack.stats_files))

        starter = asyncio.create_task(window())
        mine = await closed_loop(**options[0])
        await starter
        return load_figures([mine, *(results.get(timeout=60) for _ in clients)], args.seconds)

    result = asyncio.run(measured())
    for client in clients:
        client.join(10)
    # the engines' counters over the measured window
    engine_stats = [
        {k: after.get(k, 0) - before.get(k, 0) for k in ("loads", "steps", "tokens", "busy_s")}
        for before, after in zip(engine_before, engine_after, strict=True)
    ]
    stack.check_alive()
    stack.stop_control()
    if args.engine == "sim":
        stack.stop_workers()
        stack.stats_files = []
    result.update(policy=policy, tag=tag, cpu_cores=cpu, engines=engine_stats)
    loads = sum(s["loads"] for s in engine_stats)
    steps = sum(s["steps"] for s in engine_stats)
    tokens = sum(s["tokens"] for s in engine_stats)
    busy = sum(s["busy_s"] for s in engine_stats)
    result["adapter_loads"] = loads if engine_stats else None
    result["mean_batch"] = tokens / steps if steps else None
    # output tokens per second of engine time at the nominal step and load costs, summed
    # over the engines: what the cluster would produce if every step took its nominal time
    result["engine_tok_s"] = tokens / busy * len(engine_stats) if busy else None
    # share of the window each engine was stepping (an idle engine: placement left it
    # without work it could run)
    result["engine_busy"] = [s["busy_s"] / args.seconds for s in engine_stats]
    result["engine_tokens"] = [s["tokens"] for s in engine_stats]
    log(
        f"  {policy}: {result['rps']:.1f} req/s, {result['tok_s']:.0f} tok/s, "
        f"p50 {result['latency_p50_s']:.2f}s, errors {sum(result['errors'].values())}, "
        f"machine {cpu['machine']:.2f} cores (others {cpu['others']:.2f})"
    )
    return result


def _read_stats(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            out.append({})
    return out


def summarize(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(r)
    print(
        f"\nLoRA thrash: {args.adapters} adapters, max {args.max_loras} LoRAs per worker, "
        f"{args.workers} workers, {args.concurrency} closed-loop clients, engine={args.engine}, "
        f"nice {args.nice}"
    )
    if args.engine == "sim":
        print(
            f"  simulated engine: step {args.step_ms:.0f} ms, {args.max_num_seqs} seqs per batch, "
            f"adapter load {args.load_ms:.0f} ms, {args.max_tokens} tokens per request"
        )
    print(
        f"{'policy':>9} {'run':>3} {'req/s':>7} {'tok/s':>7} {'p50':>7} {'p99':>7} "
        f"{'loads':>6} {'batch':>6} {'busy':>9} {'tokens split':>13} {'errors':>6} "
        f"{'mine':>5} {'others':>6}"
    )
    for r in results:
        loads = "-" if r["adapter_loads"] is None else f"{r['adapter_loads']}"
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        busy = "/".join(f"{b:.2f}" for b in r.get("engine_busy", [])) or "-"
        split = "/".join(str(t) for t in r.get("engine_tokens", [])) or "-"
        cpu = r["cpu_cores"]
        print(
            f"{r['policy']:>9} {r['tag'].rsplit('-', 1)[-1]:>3} {r['rps']:>7.1f} "
            f"{r['tok_s']:>7.0f} {r['latency_p50_s']:>6.2f}s {r['latency_p99_s']:>6.2f}s "
            f"{loads:>6} {batch:>6} {busy:>9} {split:>13} {sum(r['errors'].values()):>6} "
            f"{cpu['machine'] - cpu['others']:>5.2f} {cpu['others']:>6.2f}"
        )
    mean = {p: sum(r["rps"] for r in rs) / len(rs) for p, rs in by_policy.items()}
    fcfs = mean.get("fcfs", math.nan)
    ratio = mean.get("affinity", math.nan) / fcfs
    print(
        f"\nthroughput affinity / fcfs = {mean.get('affinity', math.nan):.1f} / "
        f"{fcfs:.1f} req/s = {ratio:.2f}x   (target >= {TARGET_RATIO}x)"
    )
    quiet = {
        p: [r["rps"] for r in rs if r["cpu_cores"].get("others", 0) < args.quiet_limit]
        for p, rs in by_policy.items()
    }
    quiet_mean = {p: sum(v) / len(v) for p, v in quiet.items() if v}
    if "fcfs" in quiet_mean and len(quiet_mean) > 1:
        shown = ", ".join(
            f"{p} {v:.1f} ({v / quiet_mean['fcfs']:.2f}x)" for p, v in quiet_mean.items()
        )
        print(f"undisturbed runs only (others < {args.quiet_limit} cores): {shown}")
    print(
        "  loads = adapters put into a slot; batch = mean requests per engine step; busy = "
        "share of the window each engine was stepping; tokens split = tokens per engine; "
        "mine/others = cores used by the benchmark's processes / by everything else"
    )
    return {
        "quiet_mean_rps": quiet_mean,
        "mean_rps": mean,
        "ratio": ratio,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sim", "real"], default="sim")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-loras", type=int, default=2)
    parser.add_argument("--schedulers", type=int, default=1, help="Scheduler replicas.")
    parser.add_argument("--capacity", type=int, default=0, help="BERTH_CAPACITY (0: default).")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="Processes generating the load (one keeps up with ~64 clients here).",
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating runs per policy.")
    parser.add_argument(
        "--policies",
        default="affinity,fcfs",
        help="BERTH_PLACEMENT values to compare.",
    )
    parser.add_argument("--step-ms", type=float, default=40.0, help="sim: engine step time.")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="sim: batch size limit.")
    parser.add_argument("--load-ms", type=float, default=100.0, help="sim: adapter load time.")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.3,
        help="Before each run, wait until other processes use fewer cores than this.",
    )
    parser.add_argument("--quiet-timeout", type=float, default=20.0)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--nice",
        type=int,
        default=-5,
        help="Nice value of the benchmark and every process it starts (0: leave it).",
    )
    args = parser.parse_args(argv)
    args.nice = raise_priority(args.nice)

    logs = Path(tempfile.mkdtemp(prefix="berth-lora-bench-"))
    log(f"logs in {logs}")
    if args.engine == "real":
        _, registered = real_adapters(args.adapters)
    else:
        registered = {
            f"{ADAPTER_PREFIX}{i}": f"/sim/{ADAPTER_PREFIX}{i}" for i in range(args.adapters)
        }
    names = sorted(registered)
    policies = [p for p in args.policies.split(",") if p]
    results: list[dict[str, Any]] = []
    with embedded_valkey() as url:
        stack = Stack(args, url, logs, registered)
        try:
            for rep in range(args.repeats):
                # alternate the order, so drift on a shared machine hits both alike
                order = policies if rep % 2 == 0 else policies[::-1]
                for policy in order:
                    # the same random sequence of adapters for both policies
                    results.append(
                        run_policy(args, stack, names, policy, f"{policy}-{rep}", args.seed + rep)
                    )
        finally:
            stack.stop()
    summary = summarize(args, results)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"lora-thrash-{args.engine}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "summary": summary, "runs": results}, indent=1, default=float
        )
    )
    print(f"raw results: {out}\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
