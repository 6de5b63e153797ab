"""Prefix placement at cluster scale: a pure simulation with the scheduler's real policy.

    python -m benchmarks.prefix_placement                  # 32 workers, both workloads
    python -m benchmarks.prefix_placement --workers 64 --requests 20000

Simulated workers, each with ``--slots`` request slots and an engine prefix cache of
``--cache-blocks`` blocks (LRU, the same 256-byte blocks as the prefix key: ~64 tokens).
A request holds a slot for its prefill (``--prefill-us`` per uncached token) plus a fixed
decode time; requests arrive as a Poisson stream at ``--load`` of the cluster's
capacity, and wait in FIFO order when no worker has room. Each arrival is placed by
``berth.scheduler.policy.pick_worker`` (the scheduler's own function), as one group:

- least-loaded: today's rule without prompts (load, then a rotating tie-break);
- prefix: the same call with the group's prefix key and the index of what was sent
  where (bounded per worker as ``store/prefixes.py`` bounds it).

Workloads: *shared prefix*, ``--prefixes`` system prompts of ~2,000 tokens each taken
uniformly, each request adding a unique question; *hot prefix*, the same with one prompt
taking half of the traffic. Printed per policy: hit rate (Σ cached / Σ prompt tokens),
requests per worker max/min, the mean time in system, and pick_worker's time p50.
A measurement, not a test; no Redis, no processes.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass

from berth.protocol.envelopes import WorkerInfo
from berth.protocol.prefix_key import BLOCK_BYTES, prefix_key
from berth.scheduler import policy

TOKENS_PER_BLOCK = BLOCK_BYTES // 4


@dataclass
class _Worker:
    info: WorkerInfo
    cache: OrderedDict[bytes, None]
    served: int = 0


def _workload(n: int, prefixes: int, hot: bool, seed: int) -> list[tuple[bytes, ...]]:
    rng = random.Random(seed)
    systems = [f"system prompt {i}: " + "policy text " * 680 for i in range(prefixes)]
    keys = []
    for i in range(n):
        which = 0 if hot and rng.random() < 0.5 else rng.randrange(prefixes)
        body = {
            "messages": [
                {"role": "system", "content": systems[which]},
                {"role": "user", "content": f"question {i} " * 20},
            ]
        }
        keys.append(prefix_key("chat", body, "m", None))
    return keys


def _simulate(
    args: argparse.Namespace, prompts: list[tuple[bytes, ...]], aware: bool
) -> dict[str, float]:
    workers = {
        f"w{i}": _Worker(
            WorkerInfo(id=f"w{i}", model="m", capacity=args.slots, queue=f"q{i}"),
            OrderedDict(),
        )
        for i in range(args.workers)
    }
    infos = [w.info for w in workers.values()]
    index: dict[str, OrderedDict[bytes, None]] = {wid: OrderedDict() for wid in workers}
    running: dict[str, int] = {}
    target = policy.Target("m")
    decode_s = args.decode_s
    full_prompt_s = len(prompts[0]) * TOKENS_PER_BLOCK * args.prefill_us / 1e6
    rate = args.load * args.workers * args.slots / (decode_s + full_prompt_s / 2)
    rng = random.Random(args.seed)
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, request)
    t = 0.0
    for i in range(len(prompts)):
        t += rng.expovariate(rate)
        heapq.heappush(events, (t, i, "arrive", i))
    waiting: list[tuple[int, float]] = []
    arrived: dict[int, float] = {}
    in_system: list[float] = []
    decisions: list[float] = []
    cached_tokens = prompt_tokens = 0
    order = len(prompts)
    turn = 0

    def cached_view(wid: str) -> OrderedDict[bytes, None]:
        return index[wid]

    def place(req: int, now: float) -> bool:
        nonlocal cached_tokens, prompt_tokens, order, turn
        blocks = prompts[req]
        turn += 1
        started = time.perf_counter()
        chosen = policy.pick_worker(
            infos,
            target,
            running,
            turn=turn,
            prompts=[blocks] if aware else (),
            cached=cached_view if aware else None,
        )
        decisions.append(time.perf_counter() - started)
        if chosen is None:
            return False
        worker = workers[chosen.id]
        worker.served += 1
        running[chosen.id] = running.get(chosen.id, 0) + 1
        hit = policy.cached_blocks(blocks, worker.cache)
        for block in blocks:
            worker.cache[block] = None
            worker.cache.move_to_end(block)
        while len(worker.cache) > args.cache_blocks:
            worker.cache.popitem(last=False)
        sent = index[chosen.id]
        for block in blocks:
            sent[block] = None
            sent.move_to_end(block)
        while len(sent) > args.cache_blocks:
            sent.popitem(last=False)
        cached_tokens += hit * TOKENS_PER_BLOCK
        prompt_tokens += len(blocks) * TOKENS_PER_BLOCK
        service = decode_s + (len(blocks) - hit) * TOKENS_PER_BLOCK * args.prefill_us / 1e6
        order += 1
        heapq.heappush(events, (now + service, order, f"done {chosen.id}", req))
        return True

    while events:
        now, _, kind, req = heapq.heappop(events)
        if kind == "arrive":
            arrived[req] = now
            if waiting or not place(req, now):
                waiting.append((req, now))
            continue
        wid = kind.split()[1]
        running[wid] -= 1
        in_system.append(now - arrived[req])
        while waiting and place(waiting[0][0], now):
            waiting.pop(0)
    served = [w.served for w in workers.values()]
    return {
        "hit_rate": cached_tokens / prompt_tokens,
        "max_per_worker": max(served),
        "min_per_worker": min(served),
        "mean_in_system_s": statistics.fmean(in_system),
        "decision_p50_us": statistics.median(decisions) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--prefixes", type=int, default=96)
    parser.add_argument("--cache-blocks", type=int, default=400)
    parser.add_argument("--prefill-us", type=float, default=200.0)
    parser.add_argument("--decode-s", type=float, default=1.0)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"{args.workers} workers x {args.slots} slots, engine cache {args.cache_blocks} blocks "
        f"(~{args.cache_blocks * TOKENS_PER_BLOCK} tokens), {args.prefixes} system prompts, "
        f"{args.requests} requests at {args.load:.0%} load"
    )
    print(
        f"{'workload':<14} {'policy':<13} {'hit rate':>8} {'max/min':>9} "
        f"{'in sys s':>9} {'pick p50 us':>12}"
    )
    for name, hot in (("shared prefix", False), ("hot prefix", True)):
        prompts = _workload(args.requests, args.prefixes, hot, args.seed)
        for policy_name, aware in (("least-loaded", False), ("prefix", True)):
            r = _simulate(args, prompts, aware)
            print(
                f"{name:<14} {policy_name:<13} {r['hit_rate']:>8.2f} "
                f"{r['max_per_worker']:>4}/{r['min_per_worker']:<4} "
                f"{r['mean_in_system_s']:>9.2f} {r['decision_p50_us']:>12.1f}"
            )


if __name__ == "__main__":
    main()
