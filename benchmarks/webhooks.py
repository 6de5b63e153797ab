"""Webhook delivery: how soon after a job's end its webhook arrives, beside how soon a client
following the job's events sees its terminal event (the same jobs, the same run); and, with
the receiver down for a while, how soon after it comes back each event arrives, and whether
any is lost.

    python -m benchmarks.webhooks                          # 200 jobs; a 60 s outage of 50
    python -m benchmarks.webhooks --jobs 500 --down-s 300
    python -m benchmarks.webhooks --backoff-max-s 60       # a shorter longest wait

Real roles (API, scheduler, a worker on the fake engine) on a Valkey of their own with AOF,
and a real HTTP receiver that verifies each delivery with openai-python's
``client.webhooks.unwrap`` (``tests/e2e/webhook_receiver.py``).

After a job's end: jobs are submitted ``--concurrency`` at a time; each one's submitter
follows its events (GET /v1/jobs/{id}/events) to the terminal one. Both arrivals are
measured from the end the worker wrote (``finished_at`` in the job's record, the same
machine's clock): the webhook's arrival at the receiver, the terminal event's arrival at
the follower. p50 and p99 of each, and their ratio.

Under an outage: the receiver is down (its port closed) while ``--outage-jobs`` jobs end,
and stays down ``--down-s`` seconds; then it comes back. Per event: seconds from the
receiver's return to its first arrival (p50, p99, max); events lost (none arrived within
the backoff's longest wait plus a minute) and deliveries beyond the first (same
``webhook-id``). The backoff waits as long as an event's age, up to ``--backoff-max-s``, so
an event that failed for ``d`` seconds arrives within about ``min(d, backoff max)`` of the
return.

Raw figures go to ``benchmarks/results/webhooks-<timestamp>.json`` (``--results-dir``). A
section of its own beside ``benchmarks/elasticity.py``'s: it needs no cold model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from berth.protocol import keys
from tests.e2e.webhook_receiver import SECRET, Receiver
from tests.stack import RunningStack, free_port
from tests.valkey import Valkey

MODEL = "fake-model"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(f"[webhooks] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _body(webhook: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "webhook": webhook,
    }


def _follow(client: httpx.Client, job_id: str) -> float:
    """When the job's terminal event reached this follower."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as answer:
        for line in answer.iter_lines():
            if line.startswith("event: ") and line[7:] in ("finished", "error", "cancelled"):
                return time.time()
    raise RuntimeError(f"the events of {job_id} ended without a terminal event")


def _about(event: Any) -> str:
    """The job an event is about."""
    return str(event.model_dump()["data"]["id"])


def _ended_at(r: redis.Redis, job_id: str) -> float:
    raw: Any = r.hget(keys.job_key(job_id), "finished_at")
    return float(raw)


def after_end(
    stack: RunningStack, receiver: Receiver, jobs: int, concurrency: int
) -> dict[str, Any]:
    """Webhook and follower latency after each job's end."""
    followed: dict[str, float] = {}
    lock = threading.Lock()
    ids: list[str] = []

    def submitter(count: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            for _ in range(count):
                answer = client.post("/v1/jobs", json=_body(receiver.url))
                answer.raise_for_status()
                job_id = answer.json()["id"]
                at = _follow(client, job_id)
                with lock:
                    ids.append(job_id)
                    followed[job_id] = at

    threads = [
        threading.Thread(target=submitter, args=(jobs // concurrency,)) for _ in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = receiver.wait_for(ids, 120)
    arrived = {_about(r.event): r.at for r in receiver.received if r.event is not None}
    with redis.Redis.from_url(stack.redis_url) as r:
        ended = {i: _ended_at(r, i) for i in ids}
    hook = [arrived[i] - ended[i] for i in ids if i in arrived]
    follow = [followed[i] - ended[i] for i in ids]
    missing = len(ids) - len(seen)
    print(f"\nAfter a job's end ({len(ids)} jobs, {concurrency} at a time)")
    print("| path | p50 | p99 | max |")
    print("|---|---|---|---|")
    for name, values in (("webhook delivered", hook), ("terminal event to a follower", follow)):
        print(
            f"| {name} | {pct(values, 0.5) * 1000:.1f} ms | {pct(values, 0.99) * 1000:.1f} ms "
            f"| {max(values) * 1000:.1f} ms |"
        )
    ratio = pct(hook, 0.5) / pct(follow, 0.5) if pct(follow, 0.5) > 0 else float("nan")
    print(f"webhook / follower at p50: {ratio:.2f}; webhooks missing: {missing}")
    return {"jobs": len(ids), "webhook_s": hook, "follower_s": follow, "missing": missing}


def under_outage(
    stack: RunningStack, receiver: Receiver, jobs: int, down_s: float, backoff_max_s: float
) -> dict[str, Any]:
    """Seconds from the receiver's return to each event's first arrival."""
    receiver.stop()
    receiver.received.clear()
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        ids = []
        for _ in range(jobs):
            answer = client.post("/v1/jobs", json=_body(receiver.url))
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        for job_id in ids:
            _follow(client, job_id)
    down_since = time.time()
    log(f"{jobs} jobs ended with the receiver down; it stays down {down_s:.0f} s")
    time.sleep(max(0.0, down_s - (time.time() - down_since)))
    receiver.start()
    back_at = time.time()
    log("receiver back")
    seen = receiver.wait_for(ids, backoff_max_s * 1.1 + 60)
    first: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for r in receiver.received:
        if r.event is None:
            continue
        counts[r.webhook_id] += 1
        first.setdefault(_about(r.event), r.at)
    waits = [first[i] - back_at for i in ids if i in first]
    lost = len(ids) - len(seen)
    extra = sum(c - 1 for c in counts.values())
    print(f"\nReceiver down {down_s:.0f} s, {jobs} jobs ended meanwhile")
    print("| from the receiver's return to delivery | p50 | p99 | max | lost | sent again |")
    print("|---|---|---|---|---|---|")
    print(
        f"| webhook | {pct(waits, 0.5):.1f} s | {pct(waits, 0.99):.1f} s | {max(waits):.1f} s "
        f"| {lost} | {extra} |"
    )
    with redis.Redis.from_url(stack.redis_url) as r:
        ages = [back_at - _ended_at(r, i) for i in ids]
    print(f"events' median age at the return: {statistics.median(ages):.0f} s")
    return {"jobs": jobs, "down_s": down_s, "after_return_s": waits, "lost": lost, "extra": extra}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--outage-jobs", type=int, default=50)
    parser.add_argument("--down-s", type=float, default=60.0)
    parser.add_argument("--backoff-s", type=float, default=5.0)
    parser.add_argument("--backoff-max-s", type=float, default=1800.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {
        "BERTH_FAKE_ENGINE": "true",
        "BERTH_FAKE_TOKENS_PER_S": "200",
        "BERTH_WEBHOOK_SECRET": SECRET,
        "BERTH_WEBHOOK_ALLOW_PRIVATE": "true",
        "BERTH_WEBHOOK_BACKOFF_S": str(args.backoff_s),
        "BERTH_WEBHOOK_BACKOFF_MAX_S": str(args.backoff_max_s),
        "BERTH_LOG_LEVEL": "WARNING",
        "BERTH_WEBHOOK_POLL_S": str(args.poll_s),
    }
    with tempfile.TemporaryDirectory(prefix="berth-webhooks-") as workdir:
        valkey = Valkey(Path(workdir), free_port())
        valkey.start()
        receiver = Receiver()
        receiver.start()
        stack = RunningStack(valkey.url, env=env)
        try:
            with stack:
                stack.start("worker", "scheduler", "api")
                stack.wait_ready(120)
                figures = {
                    "args": vars(args) | {"results_dir": str(args.results_dir)},
                    "after_end": after_end(stack, receiver, args.jobs, args.concurrency),
                    "outage": under_outage(
                        stack, receiver, args.outage_jobs, args.down_s, args.backoff_max_s
                    ),
                }
        finally:
            receiver.stop()
            valkey.stop()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"webhooks-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(figures, indent=1))
    log(f"raw figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
