"""Hostile input: a list of attacks against a real stack while a second tenant sends normal
traffic, each attack's window alternating with a quiet one.

    python -m benchmarks.hostile            # every attack, 10 s windows
    python -m benchmarks.hostile --quick    # shorter windows, smaller floods
    python -m benchmarks.hostile --only huge_json,slowloris_upload

The stack is berth's real roles, each its own process, on an embedded Valkey: ``berth api``
(keys for two tenants, ``a`` the attacker and ``b`` the bystander), ``berth scheduler``
and ``berth worker`` on the fake engine. Tenant b runs in a process of its own (so the
attacks' client work does not slow its measurement): ``--bystanders`` closed-loop clients
each sending a small chat completion as soon as the last one answered. The attacks run in
another process, at the lowest CPU priority (``SCHED_IDLE``, else nice 19): it stands for a remote
client, whose own CPU is not the service's, on a machine where attacker and service share
the cores. The sampler stays in the main process.

For each attack, first a quiet window (tenant b alone), then the attack window (the attack
repeated until the window has passed, or held open for it). Between the two, tenant a gets
its whole budget back (:func:`fresh_budget`: its files deleted, its rate counts and
concurrency leases cleared in Redis), so each attack meets a's limits as if it ran first
and the order of the attacks does not change their results. It prints per attack: the
answers (status counts; ``conn:...`` a connection error, ``held`` a connection the server
still held open when the window ended) and their time to answer; the peak growth of Redis
``used_memory`` (INFO memory) and of the API's and the worker's RSS (psutil) over the
window; tenant b's p50/p99 latency and errors in the attack window and in the quiet one
before it. ``meets`` checks the issue's targets: every answer a 4xx or a success within
limits (no 5xx, no dropped connection), no error for tenant b, and b's p99 under twice its
quiet p99. Raw figures go to ``benchmarks/results/hostile-<timestamp>.json``.

Tenant a runs under the limits an operator would give a tenant it does not trust
(``ATTACKER_LIMITS``, ``--attacker-limits``), set through ``BERTH_TENANT_LIMITS``.

A measurement, not a test: it exits non-zero only when the stack cannot be started.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from benchmarks.sim import RESULTS_DIR, RoleProcess, embedded_valkey, free_port, percentile
from berth.limits import model as quota
from berth.protocol import keys

MODEL = "fake-model"
KEYS = {"a": "hostile-key-a", "b": "bystander-key-b"}
# What an operator gives a tenant it does not trust (BERTH_TENANT_LIMITS); the bystander
# keeps the defaults. Ten requests a second, a few thousand tokens a request, 16 streams at
# once, a small share of each queue, 100 files of at most 256 MB in all, 4 open batches.
ATTACKER_LIMITS = {
    "requests_per_minute": 600,
    "tokens_per_minute": 2_000_000,
    "concurrent_requests": 16,
    "queued_requests": 64,
    "files": 100,
    "file_bytes": 256 * 1024 * 1024,
    "open_batches": 4,
}
# the schema: a worker once spent minutes compiling it
SCHEMA_ATTACK = {
    "type": "object",
    "properties": {
        "a": {
            "type": "array",
            "items": {"type": "string", "pattern": "[a-z]{1,50000}"},
            "minItems": 1000000,
        }
    },
    "required": ["a"],
}

Answer = tuple[str, float]  # status (or what went wrong), seconds to answer


@dataclass
class Context:
    url: str
    quick: bool
    max_file_bytes: int
    window_s: float
    holds: list[Any] = field(default_factory=list)

    def client(self, tenant: str = "a", connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=20),
        )

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def timed(call: Awaitable[httpx.Response]) -> Answer:
    started = time.monotonic()
    try:
        answer = await call
        status = str(answer.status_code)
    except httpx.HTTPError as err:
        status = f"conn:{type(err).__name__}"
    return status, time.monotonic() - started


async def gather_bounded(
    calls: list[Callable[[], Awaitable[Answer]]], at_once: int
) -> list[Answer]:
    gate = asyncio.Semaphore(at_once)

    async def one(call: Callable[[], Awaitable[Answer]]) -> Answer:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def post_raw(
    ctx: Context, path: str, body: bytes, n: int = 1, at_once: int = 4
) -> list[Answer]:
    headers = {"Content-Type": "application/json"}
    async with ctx.client() as client:
        return await gather_bounded(
            [lambda: timed(client.post(path, content=body, headers=headers))] * n, at_once
        )


# --------------------------------------------------------------------------- #
# the attacks
# --------------------------------------------------------------------------- #


async def huge_json(ctx: Context) -> list[Answer]:
    """Bodies twice the 4 MB request bound."""
    body = json.dumps(chat("x" * 8 * 1024 * 1024)).encode()
    return await post_raw(ctx, "/v1/chat/completions", body, n=4)


async def deep_json(ctx: Context) -> list[Answer]:
    """100,000 nested arrays (200 KB): a recursive parser's stack."""
    depth = 100_000
    body = b'{"model":"%s","messages":%s%s}' % (MODEL.encode(), b"[" * depth, b"]" * depth)
    return await post_raw(ctx, "/v1/chat/completions", body, n=4)


async def many_messages(ctx: Context) -> list[Answer]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 50_000}
    return await post_raw(ctx, "/v1/chat/completions", json.dumps(body).encode(), n=4)


async def many_tools(ctx: Context) -> list[Answer]:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }
    tools = [
        {**tool, "function": {**tool["function"], "name": f"f{i}"}}  # type: ignore[dict-item]
        for i in range(10_000)
    ]
    body = json.dumps(chat(tools=tools, max_tokens=4)).encode()
    return await post_raw(ctx, "/v1/chat/completions", body, n=4)


async def long_stop(ctx: Context) -> list[Answer]:
    body = json.dumps(chat(stop=["x" * 500_000] * 4, max_tokens=4)).encode()
    return await post_raw(ctx, "/v1/chat/completions", body, n=4)


async def unicode_edges(ctx: Context) -> list[Answer]:
    """Lone surrogates, NULs, right-to-left overrides, combining marks, invalid UTF-8."""
    bodies = [
        b'{"model":"%s","messages":[{"role":"user","content":"\\ud800 lone"}]}' % MODEL.encode(),
        b'{"model":"%s","messages":[{"role":"user","content":"\\udfff\\ud800"}]}' % MODEL.encode(),
        json.dumps(chat("nul\u0000in\u0000the\u0000middle", max_tokens=4)).encode(),
        json.dumps(chat("\u202e\u2067rtl\u200f" * 1000, max_tokens=4)).encode(),
        json.dumps(chat("e" + "\u0301" * 50_000, max_tokens=4)).encode(),
        json.dumps(
            chat("\U0001f468\u200d\U0001f469\u200d\U0001f467" * 5000, max_tokens=4)
        ).encode(),
        b'{"model":"%s","messages":[{"role":"user","content":"\xff\xfe\xc0"}]}' % MODEL.encode(),
        json.dumps({**chat("hi", max_tokens=4), "model": "m\u0000odel"}).encode(),
    ]
    out = []
    for body in bodies:
        out += await post_raw(ctx, "/v1/chat/completions", body)
    return out


async def schema_attack(ctx: Context) -> list[Answer]:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA_ATTACK}}
    body = json.dumps(chat(response_format=response_format, max_tokens=8)).encode()
    return await post_raw(ctx, "/v1/chat/completions", body, n=4)


async def lora_flood(ctx: Context) -> list[Answer]:
    n = ctx.scale(500, 150)
    async with ctx.client(connections=50) as client:
        return await gather_bounded(
            [
                lambda: timed(
                    client.post(
                        "/v1/chat/completions",
                        json=chat(lora_path=f"/nowhere/{random.getrandbits(64):x}", max_tokens=4),
                    )
                )
            ]
            * n,
            50,
        )


def _multipart_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()


async def slowloris_upload(ctx: Context) -> list[Answer]:
    """Uploads that declare 10 MB and send a byte every half second, held for the window."""
    host, port = ctx.url.removeprefix("http://").split(":")
    boundary = "slow"
    n = ctx.scale(200, 50)

    async def one() -> Answer:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            return f"conn:{type(err).__name__}", time.monotonic() - started
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['a']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
        writer.write(head + _multipart_head(boundary))
        try:
            while time.monotonic() - started < ctx.window_s:
                writer.write(b"{")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(reader.readline(), 0.5)
                    if line:
                        return line.split()[1].decode(), time.monotonic() - started
            return "held", time.monotonic() - started
        except OSError as err:
            return f"conn:{type(err).__name__}", time.monotonic() - started
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def oversized_upload(ctx: Context) -> list[Answer]:
    """A chunked upload (no Content-Length) 10 MB over the file limit."""
    boundary = "big"
    total = ctx.max_file_bytes + 10 * 1024 * 1024
    # blank lines: only the size limit applies to them (8 KB each, well within the line count)
    blank = b" " * 8191 + b"\n"

    async def body() -> Any:
        yield _multipart_head(boundary)
        for _ in range(total // (len(blank) * 8)):
            yield blank * 8
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with ctx.client() as client:
        return [await timed(client.post("/v1/files", content=body(), headers=headers))]


async def many_connections(ctx: Context) -> list[Answer]:
    """Idle TCP connections held open for the window, while as many requests run at once."""
    host, port = ctx.url.removeprefix("http://").split(":")
    n = ctx.scale(1000, 300)
    idle = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            idle.append(await asyncio.open_connection(host, int(port)))
    started = time.monotonic()
    async with ctx.client(connections=n) as client:
        answers = await gather_bounded([lambda: timed(client.get("/v1/models"))] * n, n)
    await asyncio.sleep(max(0.0, ctx.window_s - (time.monotonic() - started)))
    for _, writer in idle:
        writer.close()
    return answers + [("idle-held", 0.0)] * len(idle)


async def many_followers(ctx: Context) -> list[Answer]:
    """Followers of one job's events, to its end."""
    n = ctx.scale(1000, 300)
    async with ctx.client(connections=n + 10) as client:
        job = (await client.post("/v1/jobs", json=chat(max_tokens=200))).json()

        async def follow() -> Answer:
            started = time.monotonic()
            try:
                async with client.stream("GET", f"/v1/jobs/{job['id']}/events") as answer:
                    async for _ in answer.aiter_lines():
                        pass
                    return str(answer.status_code), time.monotonic() - started
            except httpx.HTTPError as err:
                return f"conn:{type(err).__name__}", time.monotonic() - started

        return list(await asyncio.gather(*(follow() for _ in range(n))))


async def many_uploads(ctx: Context) -> list[Answer]:
    """Small valid batch files, as many as fit in the window."""
    line = json.dumps(
        {"custom_id": "c{}", "method": "POST", "url": "/v1/chat/completions", "body": chat()}
    )
    content = "".join(line.replace("c{}", f"c{i}") + "\n" for i in range(200)).encode()
    async with ctx.client(connections=20) as client:
        return await gather_bounded(
            [
                lambda: timed(
                    client.post(
                        "/v1/files",
                        files={"file": ("in.jsonl", content)},
                        data={"purpose": "batch"},
                    )
                )
            ]
            * ctx.scale(400, 100),
            20,
        )


async def request_flood(ctx: Context) -> list[Answer]:
    """One tenant's burst of chat requests (per-tenant rate limits answer this)."""
    n = ctx.scale(4000, 1000)
    async with ctx.client(connections=200) as client:
        return await gather_bounded(
            [lambda: timed(client.post("/v1/chat/completions", json=chat(max_tokens=16)))] * n,
            200,
        )


ATTACKS: dict[str, Callable[[Context], Awaitable[list[Answer]]]] = {
    "huge_json": huge_json,
    "deep_json": deep_json,
    "many_messages": many_messages,
    "many_tools": many_tools,
    "long_stop": long_stop,
    "unicode_edges": unicode_edges,
    "schema_attack": schema_attack,
    "lora_flood": lora_flood,
    "slowloris_upload": slowloris_upload,
    "oversized_upload": oversized_upload,
    "many_connections": many_connections,
    "many_followers": many_followers,
    "many_uploads": many_uploads,
    "request_flood": request_flood,
}
# attacks that hold their window themselves (the rest repeat until it has passed)
_HELD = {"many_connections", "many_followers"}


# --------------------------------------------------------------------------- #
# the attacker (tenant a), in a process of its own at the lowest CPU priority
# --------------------------------------------------------------------------- #


def _lowest_priority() -> None:
    """SCHED_IDLE where there is one (Linux): the attacker runs only on a core nothing else
    wants, as a remote client would cost the service no CPU at all. At nice 19 alone it
    still took ~0.5 of a core here while the API waited on the run queue."""
    os.nice(19)
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def attack_window(ctx: Context, name: str) -> tuple[list[Answer], float, float]:
    """Run in the attacker's process: the attack repeated until the window has passed (or
    held open for it); its answers and the window's start and end (wall clock)."""

    async def run() -> tuple[list[Answer], float, float]:
        started = time.time()
        answers: list[Answer] = []
        while True:
            answers += await ATTACKS[name](ctx)
            if name in _HELD or time.time() - started >= ctx.window_s:
                break
        return answers, started, time.time()

    return asyncio.run(run())


def attacker_pool() -> concurrent.futures.ProcessPoolExecutor:
    """The attacker's process: one, reused for every attack, at the lowest priority."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_lowest_priority,
    )


# --------------------------------------------------------------------------- #
# the bystander (tenant b), in a process of its own
# --------------------------------------------------------------------------- #


def bystander(url: str, out_path: str, clients: int, stop: Any) -> None:
    """Closed-loop chat completions; one line per answer: end time, seconds, status."""

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {KEYS['b']}"}, timeout=60
        ) as client:
            with open(out_path, "a") as out:

                async def loop() -> None:
                    while not stop.is_set():
                        status, seconds = await timed(
                            client.post("/v1/chat/completions", json=chat(max_tokens=8))
                        )
                        out.write(f"{time.time()} {seconds} {status}\n")
                        out.flush()

                await asyncio.gather(*(loop() for _ in range(clients)))

    asyncio.run(run())


def bystander_window(path: Path, start: float, end: float) -> dict[str, Any]:
    latencies, errors = [], Counter[str]()
    for row in path.read_text().splitlines():
        at, seconds, status = row.split()
        if start <= float(at) <= end:
            if status == "200":
                latencies.append(float(seconds))
            else:
                errors[status] += 1
    return {
        "n": len(latencies),
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "errors": dict(errors),
    }


# --------------------------------------------------------------------------- #
# the stack and the measurements
# --------------------------------------------------------------------------- #


def rss(proc: RoleProcess) -> int:
    try:
        root = psutil.Process(proc.target_pid())
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


class Sampler:
    """Peaks of Redis used_memory and the roles' RSS while an attack runs."""

    def __init__(self, redis_url: str, api: RoleProcess, worker: RoleProcess) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.api, self.worker = api, worker

    def now(self) -> dict[str, int]:
        used = int(self.redis.info("memory")["used_memory"])
        return {"redis": used, "api": rss(self.api), "worker": rss(self.worker)}

    async def peaks(self, stop: asyncio.Event) -> dict[str, int]:
        peak = await asyncio.to_thread(self.now)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
            sample = await asyncio.to_thread(self.now)
            peak = {k: max(v, sample[k]) for k, v in peak.items()}
        return peak


def wait_ready(url: str, roles: list[RoleProcess], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(not r.alive() for r in roles):
            raise RuntimeError("a role exited while the stack started")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as answer:
                if json.load(answer).get("workers", 0) >= 1:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError("the stack did not become ready")


async def fresh_budget(ctx: Context, r: redis.Redis) -> int:
    """Give tenant a its whole budget back before an attack, so each attack meets a's
    limits as if it came first (not a's rate 429s left by the one before): delete a's
    files through the API (they count against its file limits; the deletes free their
    reservations as any delete does), then clear a's request and token counts of this
    minute and the last and its concurrency leases. Tenant b's counters and the queues'
    shares are left alone. Returns how many files were deleted."""
    deleted = 0
    async with ctx.client() as client:
        while True:
            # a's rate may be spent by the attack before: counts cleared first, then again
            await asyncio.to_thread(_clear_counts, r, "a")
            listed = await client.get("/v1/files")
            if listed.status_code != 200:
                raise RuntimeError(f"listing a's files: {listed.status_code} {listed.text}")
            files = [f["id"] for f in listed.json()["data"]]
            if not files:
                break
            for file_id in files:
                answer = await client.delete(f"/v1/files/{file_id}")
                deleted += answer.status_code == 200
    await asyncio.to_thread(_clear_counts, r, "a")
    return deleted


def _clear_counts(r: redis.Redis, tenant: str) -> None:
    index, _ = quota.window(time.time())
    windows = (index - 1, index)
    rates = [keys.quota_rate(tenant, kind, w) for kind in ("requests", "tokens") for w in windows]
    r.delete(*rates, keys.quota_running(tenant))


def answered_cleanly(answers: list[Answer]) -> bool:
    """Every answer a 2xx or 4xx, or a connection the server held without harm."""
    return all(s in ("held", "idle-held") or s[:1] in ("2", "4") for s, _ in answers)


async def run_attack(
    ctx: Context,
    name: str,
    sampler: Sampler,
    b_log: Path,
    quiet_s: float,
    attacker: concurrent.futures.Executor,
) -> dict[str, Any]:
    quiet_start = time.time()
    await asyncio.sleep(quiet_s)
    quiet = bystander_window(b_log, quiet_start, time.time())
    # outside both windows: the quiet one is measured, the attack's starts below
    await fresh_budget(ctx, sampler.redis)
    before = await asyncio.to_thread(sampler.now)
    stop = asyncio.Event()
    peaks = asyncio.create_task(sampler.peaks(stop))
    answers, started, ended = await asyncio.get_running_loop().run_in_executor(
        attacker, attack_window, ctx, name
    )
    stop.set()
    peak = await peaks
    during = bystander_window(b_log, started, ended)
    growth = {k: peak[k] - before[k] for k in before}
    times = [s for _, s in answers]
    ratio = during["p99"] / quiet["p99"] if quiet["p99"] else float("nan")
    return {
        "attack": name,
        "answers": dict(Counter(s for s, _ in answers)),
        "answer_p50_s": percentile(times, 0.5),
        "answer_max_s": max(times) if times else float("nan"),
        "growth_bytes": growth,
        "quiet": quiet,
        "during": during,
        "p99_ratio": ratio,
        "meets": answered_cleanly(answers) and not during["errors"] and ratio < 2.0,
        "window_s": ended - started,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:+.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'attack':<18}{'answers':<34}{'p50 s':>7}{'max s':>7}{'redis':>8}{'api':>8}"
        f"{'worker':>8}{'b quiet p50/p99':>17}{'b attack p50/p99':>18}{'b err':>6}"
        f"{'p99x':>6}  meets"
    )
    print(head)
    for r in rows:
        answers = ",".join(f"{k}:{v}" for k, v in sorted(r["answers"].items()))
        g = r["growth_bytes"]
        q, d = r["quiet"], r["during"]
        print(
            f"{r['attack']:<18}{answers[:33]:<34}{r['answer_p50_s']:>7.2f}{r['answer_max_s']:>7.2f}"
            f"{_mb(g['redis']):>8}{_mb(g['api']):>8}{_mb(g['worker']):>8}"
            f"{q['p50'] * 1000:>8.0f}/{q['p99'] * 1000:<8.0f}{d['p50'] * 1000:>9.0f}/"
            f"{d['p99'] * 1000:<8.0f}{sum(d['errors'].values()):>6}{r['p99_ratio']:>6.2f}  "
            f"{'yes' if r['meets'] else 'NO'}"
        )
    print("growth in MB (peak during the window less the value before it); latencies in ms")


@contextlib.contextmanager
def stack(
    redis_url: str, port: int, env: dict[str, str], logs: Path
) -> Iterator[list[RoleProcess]]:
    roles = [
        RoleProcess.berth("worker", {**env, "BERTH_FAKE_ENGINE": "true"}, logs / "worker.log"),
        RoleProcess.berth("scheduler", env, logs / "scheduler.log"),
        RoleProcess.berth("api", env, logs / "api.log"),
    ]
    try:
        yield roles
    finally:
        for role in reversed(roles):
            role.stop()


async def main(args: argparse.Namespace) -> int:
    names = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    window_s = args.window_s or (3.0 if args.quick else 10.0)
    max_file_bytes = 20 * 1024 * 1024 if args.quick else 200 * 1024 * 1024
    logs = Path(tempfile.mkdtemp(prefix="berth-hostile-"))
    port = free_port()
    with embedded_valkey() as redis_url:
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            BERTH_PORT=str(port),
            BERTH_LOG_LEVEL="WARNING",
            BERTH_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
            BERTH_MAX_FILE_BYTES=str(max_file_bytes),
            # short enough for a slow upload to meet it within one attack window
            BERTH_UPLOAD_STALL_S=str(window_s / 3),
            BERTH_FAKE_TOKENS_PER_S=str(args.tokens_per_s),
            BERTH_TENANT_LIMITS=json.dumps({"a": json.loads(args.attacker_limits)}),
            BERTH_PROCESSES=str(args.api_processes),
        )
        print(f"tenant a's limits: {args.attacker_limits}; tenant b: the defaults", flush=True)
        print(f"api processes: {args.api_processes}", flush=True)
        url = f"http://127.0.0.1:{port}"
        with stack(redis_url, port, env, logs) as roles:
            try:
                wait_ready(url, roles)
            except (RuntimeError, TimeoutError) as err:
                print(f"stack failed: {err}; logs in {logs}")
                return 1
            worker, _, api = roles
            ctx = Context(
                url=url, quick=args.quick, max_file_bytes=max_file_bytes, window_s=window_s
            )
            b_log = logs / "bystander.log"
            spawn = multiprocessing.get_context("spawn")
            stop = spawn.Event()
            b = spawn.Process(target=bystander, args=(url, str(b_log), args.bystanders, stop))
            b.start()
            rows = []
            try:
                with attacker_pool() as attacker:
                    # start the attacker's process now, outside every window
                    await asyncio.get_running_loop().run_in_executor(attacker, time.time)
                    await asyncio.sleep(2.0)  # warm up
                    sampler = Sampler(redis_url, api, worker)
                    for name in names:
                        row = await run_attack(
                            ctx, name, sampler, b_log, args.quiet_s or window_s, attacker
                        )
                        print(f"  {name}: {row['answers']}", flush=True)
                        rows.append(row)
            finally:
                stop.set()
                b.join(timeout=30)
                if b.is_alive():
                    b.terminate()
    print()
    print_table(rows)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"hostile-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"raw figures: {out}; role logs: {logs}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s windows, smaller floods")
    parser.add_argument("--only", default="", help="comma-separated attacks to run")
    parser.add_argument("--window-s", type=float, default=0.0)
    parser.add_argument("--quiet-s", type=float, default=0.0)
    parser.add_argument("--bystanders", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="API processes on the port (`berth api --processes`)",
    )
    parser.add_argument(
        "--attacker-limits",
        default=json.dumps(ATTACKER_LIMITS),
        help="tenant a's limits, JSON (as in BERTH_TENANT_LIMITS); '{}' for the defaults",
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
