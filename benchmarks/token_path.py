"""What one Valkey core carries on the token path: the path batched per engine step (each
event's XADD, then one PUBLISH per API process per step) against the path before it (each
event's XADD and a PUBLISH on the request's own channel).

    python -m benchmarks.token_path                        # 8, 64, 256 requests, 4 APIs
    python -m benchmarks.token_path --requests 64 --apis 1 --step-ms 20 --rounds 10

Both sides run the worker's real ``EventPublisher`` (its one RESP write per loop turn) on an
embedded Valkey (its own process): the batched side through ``RequestEvents`` (each request
from one of ``--apis`` API processes), the per-request side writing what the worker wrote
before, with the same publisher (the stream write, then a PUBLISH on ``berth:tokens:{id}``).
Subscribers listen as the API processes do (one connection each: the batched side on its
delivery channel, the per-request side on its requests' channels), so every PUBLISH
delivers. An "engine step" emits one delta per running request, waits until the publisher
has flushed it, and the next starts ``--step-ms`` after it began (a GPU's decode step at
these batch sizes takes ~10-30 ms; the stream writes of the batched side come every
``STORE_EVERY_S``, so the step time sets how many events each carries). Sides alternate
round by round on the same server; the ratio is taken from the same run. Printed per
token: the server's CPU time (Valkey's ``used_cpu_user + used_cpu_sys``, less what it
spends idle over as long, measured first), the tokens/s one core of it carries at that
cost, and the worker's flush wall time (the benchmark's subscribers share its process),
medians over the rounds of each side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis.asyncio

from benchmarks.sim import embedded_valkey
from berth.plumbing.redisconn import redis_client
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, event_json
from berth.store.jobs import JobStore
from berth.workers.events import RequestEvents
from berth.workers.publisher import EventPublisher

SIDES = ("per request", "per step")


async def _server_cpu(client: redis.asyncio.Redis) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _drain(pubsub: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await pubsub.get_message(timeout=0.05)


def _old_channel(request_id: str) -> str:
    """The per-request channel the path before this one published on."""
    return f"{keys.PREFIX}:tokens:{request_id}"


async def _round(
    url: str, side: str, requests: int, apis: int, tokens: int, step_s: float, tag: str
) -> tuple[float, float]:
    """(seconds spent flushing, server CPU seconds) to write ``requests`` x ``tokens``
    deltas."""
    client = redis_client(url, 8, socket_timeout=None)
    ids = [f"bench-{tag}-{i}" for i in range(requests)]
    origins = [f"api-{i % apis}" for i in range(requests)]
    listeners = [redis.asyncio.Redis.from_url(url) for _ in range(apis)]
    subscriptions = [listener.pubsub() for listener in listeners]
    for a, pubsub in enumerate(subscriptions):
        if side == "per step":
            await pubsub.subscribe(keys.delivery_channel(f"api-{a}"))
        else:
            await pubsub.subscribe(*[_old_channel(i) for i in ids[a::apis]])
    stop = asyncio.Event()
    readers = [asyncio.create_task(_drain(p, stop)) for p in subscriptions]
    publisher = EventPublisher(client)
    publisher.start()
    jobs = JobStore(client, 3600)
    writers = [
        RequestEvents(publisher, QueuedRequest(id=i, model="m", request={}, origin=o), "w1", jobs)
        for i, o in zip(ids, origins, strict=True)
    ]
    choices = [{"index": 0, "content": "word "}]
    cpu0, t0 = await _server_cpu(client), time.perf_counter()
    flushing = 0.0
    for seq in range(tokens):
        started = time.perf_counter()
        if side == "per step":
            for writer in writers:
                writer.emit("delta", choices=choices)
        else:
            for i in ids:
                payload = event_json(i, "delta", seq=seq, worker="w1", choices=choices)
                stream = keys.request_events(i)
                expire = keys.REQUEST_EVENTS_TTL_S if seq == 0 else None
                entry = keys.event_entry_id(0, seq)
                body = payload.encode()
                publisher.store(stream, entry, body, keys.REQUEST_EVENTS_MAXLEN, expire)
                publisher.publish(_old_channel(i), payload)
        await publisher.drain()
        flushing += time.perf_counter() - started
        await asyncio.sleep(max(0.0, started + step_s - time.perf_counter()))
    wall = time.perf_counter() - t0
    cpu = await _server_cpu(client) - cpu0 - wall * _idle_cpu_per_s
    stop.set()
    await asyncio.gather(*readers)
    await publisher.close()
    for pubsub, listener in zip(subscriptions, listeners, strict=True):
        await pubsub.aclose()
        await listener.aclose()
    await client.delete(*[keys.request_events(i) for i in ids])
    await client.aclose()
    return flushing, cpu


# the server's CPU per second while nobody talks to it (its timers), measured first
_idle_cpu_per_s = 0.0


async def _idle(url: str, seconds: float = 3.0) -> float:
    client = redis_client(url)
    cpu0 = await _server_cpu(client)
    await asyncio.sleep(seconds)
    idle = (await _server_cpu(client) - cpu0) / seconds
    await client.aclose()
    return idle


async def _run(counts: list[int], apis: int, tokens: int, step_s: float, rounds: int) -> None:
    global _idle_cpu_per_s
    print(
        f"{tokens} tokens per request, a step every {step_s * 1000:g} ms, {apis} API "
        f"processes, {rounds} rounds per side"
    )
    with embedded_valkey() as url:
        _idle_cpu_per_s = await _idle(url)
        print(f"(the server idle: {_idle_cpu_per_s * 1000:.2f} ms CPU per second, subtracted)")
        print(
            f"{'requests':>8}  {'side':<12}{'server CPU us/token':>21}"
            f"{'tokens/s per core':>19}{'flush wall us/token':>21}"
        )
        for requests in counts:
            for side in SIDES:  # warm-up, not counted
                await _round(url, side, requests, apis, 10, 0, f"warm-{requests}-{side[-4:]}")
            figures: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
            for r in range(rounds):
                # alternate which side goes first, so drift hits both alike
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for side in order:
                    tag = f"{requests}-{r}-{side[-4:]}"
                    figures[side].append(
                        await _round(url, side, requests, apis, tokens, step_s, tag)
                    )
            n = requests * tokens
            cpu_us = {}
            for side in SIDES:
                wall = statistics.median(w for w, _ in figures[side]) / n * 1e6
                cpu_us[side] = statistics.median(c for _, c in figures[side]) / n * 1e6
                print(
                    f"{requests:>8}  {side:<12}{cpu_us[side]:>21.2f}"
                    f"{1e6 / cpu_us[side]:>19,.0f}{wall:>21.2f}"
                )
            ratio = cpu_us["per request"] / cpu_us["per step"]
            print(f"{requests:>8}  {'ratio':<12}{'':>21}{ratio:>18.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", default="8,64,256", help="requests running at once, comma-separated"
    )
    parser.add_argument("--apis", type=int, default=4, help="API processes the requests come from")
    parser.add_argument("--tokens", type=int, default=200, help="deltas per request")
    parser.add_argument("--step-ms", type=float, default=10.0, help="engine step time")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.requests.split(",")]
    asyncio.run(_run(counts, args.apis, args.tokens, args.step_ms / 1000, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
