"""Per-token cost of the lossless relay: PUBLISH alone vs XADD to the request's event stream
plus PUBLISH (plus the stream's occasional EXPIRE), the worker's write path either way.

    python -m benchmarks.relay_cost                       # 64 requests x 200 tokens, 6 rounds
    python -m benchmarks.relay_cost --requests 256 --tokens 100 --rounds 10

Both sides run the worker's real ``EventPublisher`` and ``RequestEvents`` code on an
embedded Valkey (its own process), with one subscriber on every request's channel (as the
API has), so PUBLISH delivers. An "engine step" emits one delta per running request, then
waits until the publisher has flushed it: one pipeline per step, as on a worker. The sides
alternate round by round on the same server and the ratio is taken from the same run.
Printed per token: wall time of the flush (the publisher's loop time) and the server's CPU
time (Valkey's ``used_cpu_user + used_cpu_sys``), medians over the rounds of each side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis.asyncio

from benchmarks.sim import embedded_valkey
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, event_json
from berth.store.jobs import JobStore
from berth.workers.events import RequestEvents
from berth.workers.publisher import EventPublisher


async def _server_cpu(client: redis.asyncio.Redis) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _drain_subscriber(pubsub: Any, stop: asyncio.Event) -> int:
    got = 0
    while not stop.is_set():
        message = await pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] == "message":
            got += 1
    return got


async def _round(
    client: redis.asyncio.Redis, lossless: bool, requests: int, tokens: int, tag: str
) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) to write ``requests`` x ``tokens`` deltas."""
    ids = [f"bench-{tag}-{i}" for i in range(requests)]
    pubsub = client.pubsub()
    await pubsub.subscribe(*[keys.token_channel(i) for i in ids])
    stop = asyncio.Event()
    reader = asyncio.create_task(_drain_subscriber(pubsub, stop))
    publisher = EventPublisher(client)
    publisher.start()
    jobs = JobStore(client, 3600)
    writers = [
        RequestEvents(publisher, QueuedRequest(id=i, model="m", request={}), "w1", jobs)
        for i in ids
    ]
    choices = [{"index": 0, "content": "word "}]
    cpu0, t0 = await _server_cpu(client), time.perf_counter()
    for _ in range(tokens):
        for i, writer in zip(ids, writers, strict=True):
            if lossless:
                writer.emit("delta", choices=choices)
            else:
                # the write path before the event stream: PUBLISH only
                publisher.publish(
                    keys.token_channel(i),
                    event_json(i, "delta", seq=0, worker="w1", choices=choices),
                )
        await publisher.drain()
    wall = time.perf_counter() - t0
    cpu = await _server_cpu(client) - cpu0
    stop.set()
    await reader
    await publisher.close()
    await pubsub.aclose()
    await client.delete(*[keys.request_events(i) for i in ids])
    return wall, cpu


async def _run(requests: int, tokens: int, rounds: int) -> None:
    with embedded_valkey() as url:
        client = redis.asyncio.Redis.from_url(url)
        await _round(client, True, requests, 10, "warm-a")  # warm-up, not counted
        await _round(client, False, requests, 10, "warm-b")
        figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(rounds):
            # alternate which side goes first, so drift hits both alike
            order = (False, True) if r % 2 == 0 else (True, False)
            for lossless in order:
                figures[lossless].append(
                    await _round(client, lossless, requests, tokens, f"{r}-{int(lossless)}")
                )
        await client.aclose()
    n = requests * tokens
    print(f"{requests} requests x {tokens} tokens, {rounds} rounds per side, one pipeline per step")
    print(f"{'side':<28}{'wall us/token':>15}{'server CPU us/token':>22}")
    medians = {}
    for lossless, name in ((False, "PUBLISH only"), (True, "XADD + PUBLISH (+EXPIRE)")):
        wall = statistics.median(w for w, _ in figures[lossless]) / n * 1e6
        cpu = statistics.median(c for _, c in figures[lossless]) / n * 1e6
        medians[lossless] = (wall, cpu)
        print(f"{name:<28}{wall:>15.2f}{cpu:>22.2f}")
    print(
        f"{'ratio (lossless / publish)':<28}{medians[True][0] / medians[False][0]:>15.2f}"
        f"{medians[True][1] / medians[False][1]:>22.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests running at once")
    parser.add_argument("--tokens", type=int, default=200, help="deltas per request")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side")
    args = parser.parse_args(argv)
    asyncio.run(_run(args.requests, args.tokens, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
