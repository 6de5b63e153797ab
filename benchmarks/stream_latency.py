"""Where one stream's per-token time goes between the engine and the SSE chunk, at concurrency 1.

    python -m benchmarks.stream_latency                   # 2,000 tokens, one every 1.2 ms
    python -m benchmarks.stream_latency --tokens 5000 --every-ms 2

Two processes, as in berth: a worker (its engine loop thread's asyncio loop, the real
``RequestEvents`` and ``EventPublisher``) emits one delta every ``--every-ms`` (the engine's
step time at concurrency 1 is ~1.2 ms on this machine) for one request, and an API
process (this one: the real ``TokenRelay``, ``request_events`` and ``ChunkWriter``) follows
it, on an embedded Valkey. Each token's times are taken with the machine's monotonic clock,
the same in both processes:

- *emit -> flush*: the worker hands the event to the publisher until the publisher's flush
  of it starts (the flush task's wakeup);
- *flush -> relay*: the RESP build and send, Valkey, and the API process waking up on its
  socket, until the relay decoded the message;
- *relay -> reader*: the request's reader task waking on its queue and checking the event
  (order, attempt);
- *reader -> chunk*: the chunk rendered (``ChunkWriter.render``).

What it leaves out, measured elsewhere: the engine's output processing (vLLM's own server
does the same work), and uvicorn's send of the chunk (the ceiling benchmark). Medians and
p90 per stage, and each process's CPU per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from typing import Any

from benchmarks.sim import embedded_valkey
from berth.api.delivery.events import request_events
from berth.api.delivery.relay import TokenRelay
from berth.plumbing.eventloop import new_loop
from berth.plumbing.redisconn import redis_client
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.output import ChunkWriter
from berth.store.jobs import JobStore
from berth.workers.events import RequestEvents
from berth.workers.publisher import EventPublisher

ORIGIN = "api-bench"


def _worker(url: str, request_id: str, tokens: int, every_s: float, out: Any) -> None:
    """The worker's side: one request's events, one delta every ``every_s``."""

    async def run() -> None:
        client = redis_client(url, 4, socket_timeout=None)
        publisher = EventPublisher(client)
        flushed: list[int] = []
        send_raw = publisher._send_raw

        async def timed_send(commands: list[tuple[bytes, ...]]) -> None:
            flushed.append(time.perf_counter_ns())
            await send_raw(commands)

        publisher._send_raw = timed_send  # type: ignore[method-assign]
        publisher.start()
        queued = QueuedRequest(id=request_id, model="m", request={}, origin=ORIGIN)
        events = RequestEvents(publisher, queued, "w1", JobStore(client, 3600))
        events.emit("started")
        await publisher.drain()
        await asyncio.sleep(0.5)  # the API side is listening (it opened before we started)
        cpu0 = time.process_time()
        emitted: list[int] = []
        flushes_before: list[int] = []
        next_at = time.perf_counter()
        for _ in range(tokens):
            next_at += every_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            flushes_before.append(len(flushed))
            emitted.append(time.perf_counter_ns())
            events.emit("delta", choices=[{"index": 0, "content": str(emitted[-1])}])
        events.emit("finished", choices=[{"index": 0, "content": "", "finish_reason": "stop"}])
        await publisher.drain()
        cpu = time.process_time() - cpu0
        await publisher.close()
        await client.aclose()
        # each token's flush: the first one that ended after it was emitted
        token_flush = [flushed[i] for i in flushes_before]
        out.send({"emitted": emitted, "flushed": token_flush, "cpu_s": cpu})

    loop = new_loop()
    loop.run_until_complete(run())


async def _api(url: str, request_id: str, tokens: int, every_s: float) -> dict[str, Any]:
    client = redis_client(url)
    relay = TokenRelay(client, ORIGIN)
    received: dict[int, int] = {}
    deliver = relay._deliver

    def timed_deliver(data: bytes) -> None:
        now = time.perf_counter_ns()
        deliver(data)
        for event in json.loads(data):
            received[event["seq"]] = now

    relay._channel._deliver = timed_deliver
    await relay.start()
    queue = await relay.open(request_id)
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=_worker, args=(url, request_id, tokens, every_s, child)
    )
    worker.start()

    async def fetch(attempt: int, first: int, end: int | None) -> list[Any]:
        return await relay.fetch(request_id, attempt, first, end)

    writer = ChunkWriter(request_id, "m", int(time.time()), 1, False)
    read: dict[int, int] = {}
    rendered: dict[int, int] = {}
    cpu0 = time.process_time()
    async for event in request_events(
        request_id,
        queue,
        is_alive=lambda worker, incarnation: True,
        check_every_s=5.0,
        deadline=time.monotonic() + 600,
        fetch=fetch,
    ):
        read[event.seq] = time.perf_counter_ns()
        writer.render(event)
        rendered[event.seq] = time.perf_counter_ns()
    cpu = time.process_time() - cpu0
    result = await asyncio.to_thread(parent.recv)
    await asyncio.to_thread(worker.join)
    relay.release(request_id)
    await relay.close()
    await client.aclose()
    result.update(received=received, read=read, rendered=rendered, api_cpu_s=cpu)
    return result


def _row(name: str, us: list[float]) -> str:
    us = sorted(us)
    p50, p90 = statistics.median(us), us[int(len(us) * 0.9)]
    return f"{name:<22}{p50:>10.0f}{p90:>10.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="deltas in the stream")
    parser.add_argument("--every-ms", type=float, default=1.2, help="ms between deltas")
    args = parser.parse_args(argv)
    with embedded_valkey() as url:
        got = asyncio.run(_api(url, f"one-{os.getpid()}", args.tokens, args.every_ms / 1000))
    seqs = range(1, args.tokens + 1)  # seq 0 is "started"
    stages = {
        "emit -> flush": [
            (f - e) / 1e3 for e, f in zip(got["emitted"], got["flushed"], strict=True)
        ],
        "flush -> relay": [
            (got["received"][s] - f) / 1e3 for s, f in zip(seqs, got["flushed"], strict=True)
        ],
        "relay -> reader": [(got["read"][s] - got["received"][s]) / 1e3 for s in seqs],
        "reader -> chunk": [(got["rendered"][s] - got["read"][s]) / 1e3 for s in seqs],
        "emit -> chunk": [
            (got["rendered"][s] - e) / 1e3 for s, e in zip(seqs, got["emitted"], strict=True)
        ],
    }
    print(f"{args.tokens} tokens, one every {args.every_ms} ms, one stream")
    print(f"{'stage':<22}{'p50 us':>10}{'p90 us':>10}")
    for name, us in stages.items():
        print(_row(name, us))
    n = args.tokens
    print(
        f"CPU per token: worker {got['cpu_s'] / n * 1e6:.0f} us, "
        f"API {got['api_cpu_s'] / n * 1e6:.0f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
