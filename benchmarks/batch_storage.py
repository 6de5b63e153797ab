"""Redis memory of a batch: what a 10,000-line input file costs once uploaded, and once its
batch has started, with the batch's window (default 1000 lines live) and with a window as
large as the file (every line a job and a queue entry at once, as berth did before
batches fed their lines a window at a time).

    python -m benchmarks.batch_storage [--lines 10000] [--content-chars 400]

Runs berth's real stores (``FileStore``, ``BatchStore``) against an embedded Valkey,
flushed before each side; prints ``used_memory`` growth (INFO memory) after the upload and
after the batch starts, for each window, alternating sides ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import redis.asyncio

from benchmarks.sim import embedded_valkey
from berth.protocol.limits import RequestLimits
from berth.store.batches import BatchStore
from berth.store.files import FileStore, new_file_id

TTL = 3600


def line(i: int, chars: int) -> bytes:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"question {i}: " + "x" * chars}],
        "max_tokens": 16,
    }
    return json.dumps(
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


async def used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def one_side(url: str, lines: list[bytes], window: int) -> dict[str, int]:
    client: Any = redis.asyncio.Redis.from_url(url)
    try:
        await client.execute_command("FLUSHDB", "SYNC")
        base = await used(client)
        files = FileStore(client, TTL)
        file_id = new_file_id()
        for start in range(0, len(lines), 1000):
            await files.append(file_id, lines[start : start + 1000])
        await files.commit(file_id, "t", "in.jsonl", "batch", sum(len(x) + 1 for x in lines))
        uploaded = await used(client)
        now = time.time()
        await BatchStore(client, TTL).create(
            "t",
            input_file_id=file_id,
            total=len(lines),
            resolved={("m", None): ("m", None)},
            limits=RequestLimits(),
            window=window,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            created_at=now,
            expires_at=now + 24 * 3600,
        )
        started = await used(client)
        return {"file": uploaded - base, "batch": started - uploaded, "total": started - base}
    finally:
        await client.aclose()


async def main(args: argparse.Namespace) -> None:
    lines = [line(i, args.content_chars) for i in range(args.lines)]
    size = sum(len(x) + 1 for x in lines)
    windows = {"window 1000": 1000, f"window {args.lines} (all)": args.lines}
    figures: dict[str, list[dict[str, int]]] = {name: [] for name in windows}
    with embedded_valkey() as url:
        for _ in range(args.repeats):
            for name, window in windows.items():
                figures[name].append(await one_side(url, lines, window))
    print(f"{args.lines} lines, {size / 1e6:.2f} MB file; Redis used_memory growth (MB):")
    print(f"{'side':<24}{'file':>10}{'batch start':>14}{'total':>10}{'total/file':>12}")
    for name, runs in figures.items():
        best = min(runs, key=lambda r: r["total"])
        print(
            f"{name:<24}{best['file'] / 1e6:>10.2f}{best['batch'] / 1e6:>14.2f}"
            f"{best['total'] / 1e6:>10.2f}{best['total'] / max(1, best['file']):>12.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--content-chars", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
