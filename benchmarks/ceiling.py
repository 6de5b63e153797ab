"""The pipeline's ceiling: what berth's processes carry with an engine of unlimited speed.

    python -m benchmarks.ceiling                      # ~3 minutes
    python -m benchmarks.ceiling --seconds 8 --rounds 3 --layouts 1x1,2x1,2x2
    python -m benchmarks.ceiling --profile /tmp/ceil  # py-spy every berth role (adds load)

Measures, in one run, alternating round by round:

- ``sse-floor``: a plain FastAPI endpoint (uvicorn, as berth's API runs) that streams the
  same OpenAI chunks, made in process: what one API process could carry at best;
- ``pubsub-floor``: Redis pub/sub's own rate: a publisher process pipelining PUBLISH
  (one pipeline per "engine step" over all channels, as the worker's publisher does) and
  a redis-py subscriber reading them, as the API's relay does;
- ``berth AxW``: the whole pipeline (A API processes, one scheduler, W workers on the
  fake engine with no delay, one embedded Valkey), streamed chat completions.

The load is closed-loop: ``--clients`` streams at once, each asking ``--tokens`` tokens
(raw HTTP/1.1 over keep-alive sockets, spread over the API processes; the client is as
cheap as it can be, as it shares the 2 cores). Printed per layout: requests/s, relayed
tokens/s, and each process's CPU milliseconds per 1,000 tokens: the CPU-time figure
holds even when other work shares the machine, the rates do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from benchmarks.sim import CpuMeter, RoleProcess, embedded_valkey, free_port, valkey_pid

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# the API-process target: berth's tokens/s per API process >= this x the SSE floor
TARGET_FLOOR_RATIO = 0.5
MODEL = "berth-ceiling"


def log(message: str) -> None:
    print(f"[ceiling {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- #
# load generator: raw HTTP/1.1 streaming clients
# --------------------------------------------------------------------------- #


def _request_bytes(port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": tokens,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _stream_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One streamed request on a kept-alive connection; the number of data chunks."""
    writer.write(request)
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"answer {status!r}")
    while await reader.readline() not in (b"\r\n", b""):
        pass
    chunks = 0
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError("connection closed mid-stream")
        if line.startswith(b"data: {"):
            chunks += 1
        elif line.startswith(b"data: [DONE]"):
            break
    # the chunked body's last chunk ("0") and its blank line
    while (line := await reader.readline()) != b"0\r\n":
        if not line:
            raise RuntimeError("connection closed after [DONE]")
    await reader.readline()
    return chunks


async def _client(
    port: int, tokens: int, stop_at: float, counts: list[int], errors: list[str]
) -> None:
    request = _request_bytes(port, tokens)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        while time.monotonic() < stop_at:
            try:
                chunks = await _stream_once(reader, writer, request)
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
                return
            counts[0] += 1
            counts[1] += chunks
    finally:
        writer.close()


def _load(ports: list[int], clients: int, tokens: int, seconds: float, out: Any) -> None:
    """In a process of its own: closed-loop clients for ``seconds``; sends its counts."""

    async def main() -> tuple[int, int, float, list[str]]:
        counts, errors = [0, 0], list[str]()
        start = time.monotonic()
        await asyncio.gather(
            *(
                _client(ports[i % len(ports)], tokens, start + seconds, counts, errors)
                for i in range(clients)
            )
        )
        return counts[0], counts[1], time.monotonic() - start, errors[:3]

    try:
        import uvloop

        out.send(uvloop.run(main()))
    except ImportError:
        out.send(asyncio.run(main()))


def run_load(
    ports: list[int], clients: int, tokens: int, seconds: float, pids: dict[str, int]
) -> dict[str, Any]:
    """Drive the servers; requests/s, chunks/s and each process's cores during the run."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_load, args=(ports, clients, tokens, seconds, child), daemon=True)
    proc.start()
    assert proc.pid is not None
    meter = CpuMeter({**pids, "client": proc.pid})
    meter.start()
    requests, chunks, wall, errors = parent.recv()
    cores = meter.stop()
    proc.join(10)
    tokens_per_s = chunks / wall
    return {
        "requests_per_s": requests / wall,
        "tokens_per_s": tokens_per_s,
        "chunks": chunks,
        "errors": errors,
        "cores": cores,
        # CPU ms per 1,000 relayed tokens, per process
        "cpu_ms_per_1k_tokens": {
            label: 1e6 * used / tokens_per_s if tokens_per_s else float("nan")
            for label, used in cores.items()
            if label not in ("machine", "others")
        },
    }


# --------------------------------------------------------------------------- #
# floor 1: a plain FastAPI SSE endpoint producing the tokens in process
# --------------------------------------------------------------------------- #


def sse_floor_app() -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = json.loads(await request.body())
        tokens = int(body.get("max_tokens") or 16)
        head = {"id": "chatcmpl-floor", "object": "chat.completion.chunk", "created": 0}
        head["model"] = body["model"]

        async def stream() -> Any:
            for i in range(tokens):
                await asyncio.sleep(0)  # one token per loop turn, as a stream gets them
                choice = {"index": 0, "delta": {"content": "word "}, "logprobs": None}
                choice["finish_reason"] = "length" if i == tokens - 1 else None
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _serve_floor(port: int) -> None:
    import uvicorn

    uvicorn.run(sse_floor_app(), host="127.0.0.1", port=port, log_level="warning")


def wait_port(port: int, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def measure_sse_floor(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    server = ctx.Process(target=_serve_floor, args=(port,), daemon=True)
    server.start()
    assert server.pid is not None
    try:
        wait_port(port)
        run_load([port], args.clients, args.tokens, 1.0, {"api": server.pid})  # warm-up
        return run_load([port], args.clients, args.tokens, args.seconds, {"api": server.pid})
    finally:
        server.terminate()
        server.join(10)


# --------------------------------------------------------------------------- #
# floor 2: Redis pub/sub's own message rate
# --------------------------------------------------------------------------- #

_PAYLOAD = json.dumps(
    {
        "id": "chatcmpl-" + "0" * 32,
        "seq": 12,
        "type": "delta",
        "worker": "worker-000000",
        "attempt": 0,
        "choices": [{"index": 0, "content": "word "}],
    }
)


# messages published and not yet read, at most: an unbounded publisher outruns the
# subscriber and Valkey closes it (client-output-buffer-limit pubsub)
_WINDOW = 8192


def _publisher(url: str, channels: int, seconds: float, ready: Any, read: Any) -> None:
    import redis

    client = redis.Redis.from_url(url)
    names = [f"ceiling:{i}" for i in range(channels)]
    ready.wait()
    stop_at = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < stop_at:
        if sent - read.value > _WINDOW:
            time.sleep(0.0005)
            continue
        sent += len(names)
        pipe = client.pipeline(transaction=False)
        for name in names:  # one engine step: one event per request, one round trip
            pipe.publish(name, _PAYLOAD)
        pipe.execute()
    client.close()


def measure_pubsub_floor(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio

    channels = args.clients
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    read = ctx.Value("q", 0, lock=False)
    pub = ctx.Process(
        target=_publisher, args=(url, channels, args.seconds, ready, read), daemon=True
    )
    pub.start()
    assert pub.pid is not None
    server = valkey_pid(url)
    pids = {"publisher": pub.pid, **({"valkey": server} if server else {})}

    async def subscribe() -> tuple[int, float, dict[str, float]]:
        client = redis.asyncio.Redis.from_url(url)
        pubsub = client.pubsub()
        await pubsub.subscribe(*[f"ceiling:{i}" for i in range(channels)])
        meter = CpuMeter({**pids, "subscriber": os.getpid()})
        got, start, last = 0, 0.0, 0.0
        ready.set()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                if got:
                    break
                continue
            if message["type"] != "message":
                continue
            if not got:
                start = time.monotonic()
                meter.start()
            got += 1
            if not got % 256:
                read.value = got
            last = time.monotonic()
        cores = meter.stop()
        await pubsub.aclose()
        await client.aclose()
        return got, last - start, cores

    got, wall, cores = asyncio.run(subscribe())
    pub.join(10)
    rate = got / max(wall, 1e-9)
    return {
        "messages_per_s": rate,
        "tokens_per_s": rate,
        "cores": cores,
        "cpu_ms_per_1k_tokens": {
            label: 1e6 * used / rate
            for label, used in cores.items()
            if label not in ("machine", "others")
        },
    }


# --------------------------------------------------------------------------- #
# berth's pipeline
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def berth_stack(
    url: str, apis: int, workers: int, log_dir: Path
) -> Iterator[tuple[list[int], dict[str, int]]]:
    env = dict(os.environ, REDIS_URL=url, BERTH_LOG_LEVEL="WARNING")
    env.update(
        BERTH_ALLOW_ANONYMOUS="true",
        BERTH_FAKE_ENGINE="true",
        BERTH_SERVED_MODEL_NAME=MODEL,
        BERTH_ENABLE_LORA="false",
        BERTH_HEARTBEAT_INTERVAL="1",
        # the load is one tenant at hundreds of requests a second, past the default rate
        # (6,000 a minute): a limit it never reaches keeps the quota scripts on the path
        BERTH_TENANT_REQUESTS_PER_MINUTE=str(10**9),
    )
    env.pop("BERTH_MODEL", None)
    procs: list[tuple[str, RoleProcess]] = []
    ports = [free_port() for _ in range(apis)]

    def start(label: str, role: str, extra: dict[str, str]) -> None:
        procs.append((label, RoleProcess.berth(role, {**env, **extra}, log_dir / f"{label}.log")))

    try:
        for w in range(workers):
            start(f"worker{w}", "worker", {"BERTH_WORKER_ID": f"ceiling-w{w}"})
        start("scheduler", "scheduler", {})
        for a, port in enumerate(ports):
            start(f"api{a}", "api", {"BERTH_PORT": str(port), "BERTH_HOST": "127.0.0.1"})
        for port in ports:
            _wait_ready(port, procs)
        pids = {label: p.target_pid() for label, p in procs}
        server = valkey_pid(url)
        if server:
            pids["valkey"] = server
        yield ports, pids
    finally:
        for _, proc in reversed(procs):
            proc.stop()


def _wait_ready(port: int, procs: list[tuple[str, RoleProcess]], timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for label, proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{label} exited:\n{proc.tail()}")
        with (
            contextlib.suppress(Exception),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as answer,
        ):
            if json.loads(answer.read()).get("workers", 0) >= 1:
                return
        time.sleep(0.3)
    raise TimeoutError(f"api on {port} not ready")


def command_calls(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def measure_berth(
    url: str, apis: int, workers: int, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    with berth_stack(url, apis, workers, log_dir) as (ports, pids):
        run_load(ports, args.clients, args.tokens, 2.0, pids)  # warm-up
        profiler = None
        if args.profile is not None:
            from benchmarks.serve import Profiler

            out = args.profile / f"berth-{apis}x{workers}-{time.strftime('%H%M%S')}"
            # attached for the measured run only: no start-up in the stacks
            profiler = Profiler(out, rate=100)
            profiler.start({k: v for k, v in pids.items() if k != "valkey"})
        calls = command_calls(url)
        result = run_load(ports, args.clients, args.tokens, args.seconds, pids)
        done = max(1.0, result["requests_per_s"] * args.seconds)
        after = command_calls(url)
        # Valkey commands per request, all roles together (INFO commandstats)
        result["commands_per_request"] = {
            name: round((n - calls.get(name, 0)) / done, 2)
            for name, n in sorted(after.items(), key=lambda kv: -kv[1] + calls.get(kv[0], 0))
            if n - calls.get(name, 0) >= done / 10
        }
        if profiler is not None:
            result["profile"] = profiler.stop()
    return result


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def _median_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for label, value in run["cpu_ms_per_1k_tokens"].items():
            per[label].append(value)
    return {label: statistics.median(v) for label, v in per.items()}


def report(results: dict[str, list[dict[str, Any]]], layouts: list[tuple[int, int]]) -> str:
    floor = _median(results["sse-floor"], "tokens_per_s") or float("nan")
    lines = [
        f"{'side':<16}{'req/s':>10}{'tokens/s':>12}{'per api':>10}{'x floor':>9}"
        f"{'others':>8}   CPU ms per 1,000 tokens",
        "-" * 100,
    ]
    for name, runs in results.items():
        tokens = _median(runs, "tokens_per_s")
        apis = next((a for a, w in layouts if name == f"berth {a}x{w}"), 1)
        req = (
            f"{_median(runs, 'requests_per_s'):>10,.0f}"
            if "requests_per_s" in runs[0]
            else " " * 10
        )
        per_api = tokens / apis
        shown = f"{per_api / floor:>9.2f}" if name != "pubsub-floor" else " " * 9
        others = statistics.median(r["cores"]["others"] for r in runs)
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(_median_cpu(runs).items()))
        lines.append(
            f"{name:<16}{req}{tokens:>12,.0f}{per_api:>10,.0f}{shown}{others:>8.2f}   {cpu}"
        )
    first = f"berth {layouts[0][0]}x{layouts[0][1]}"
    if first in results:
        ratio = _median(results[first], "tokens_per_s") / layouts[0][0] / floor
        verdict = "met" if ratio >= TARGET_FLOOR_RATIO else "MISSED"
        lines += ["", f"{first}: {ratio:.2f} x the SSE floor per API process "
                  f"(target >= {TARGET_FLOOR_RATIO}): {verdict}"]  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__)
    add = parser.add_argument
    add("--seconds", type=float, default=6.0, help="measured seconds per run (6)")
    add("--rounds", type=int, default=3, help="rounds, sides alternating (3)")
    add("--clients", type=int, default=64, help="concurrent streams (64)")
    add("--tokens", type=int, default=64, help="tokens per request (64)")
    add("--layouts", default="1x1,2x1,2x2", help="berth layouts APIxWORKERS (1x1,2x1,2x2)")
    add("--profile", type=Path, metavar="DIR", help="py-spy every berth role into DIR")
    add("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layouts = [(int(a), int(w)) for a, w in (x.split("x") for x in args.layouts.split(","))]
    log_dir = Path(tempfile.mkdtemp(prefix="berth-ceiling-"))
    log(f"logs: {log_dir}")
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with embedded_valkey() as url:
        for i in range(args.rounds):
            sides: list[tuple[str, Any]] = [
                ("sse-floor", lambda: measure_sse_floor(args)),
                ("pubsub-floor", lambda: measure_pubsub_floor(url, args)),
            ]
            sides += [
                (f"berth {a}x{w}", lambda a=a, w=w: measure_berth(url, a, w, args, log_dir))
                for a, w in layouts
            ]
            for name, run in sides if i % 2 == 0 else sides[::-1]:
                result = run()
                results[name].append(result)
                log(
                    f"round {i + 1}: {name}: {result['tokens_per_s']:,.0f} tokens/s"
                    + (
                        f", {result['requests_per_s']:,.0f} req/s"
                        if "requests_per_s" in result
                        else ""
                    )
                    + f", others {result['cores']['others']:.2f} cores"
                    + (f", errors {result['errors']}" if result.get("errors") else "")
                )
    text = report(results, layouts)
    for name, runs in results.items():
        if "commands_per_request" in runs[-1]:
            per = ", ".join(f"{k} {v:g}" for k, v in runs[-1]["commands_per_request"].items())
            text += f"\n{name}: Valkey commands per request: {per}"
    print(f"\n{text}\n", flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"ceiling-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
