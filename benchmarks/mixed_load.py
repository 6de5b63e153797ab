"""Mixed load: an interactive user's time to first token while batch work floods the engine.

    python -m benchmarks.mixed_load            # 2 rounds, quiet + floods of 16, 32, 64 (~13 min)
    python -m benchmarks.mixed_load --quick    # 1 round, quiet + floods of 16, 64 (~5 min)
    python -m benchmarks.mixed_load --report benchmarks/results/mixed-load-<stamp>.json

berth's whole stack on the tiny model (as ``benchmarks.serve`` starts it), one worker with
``--max-num-seqs`` (16) and two tenants:

- ``flood`` keeps K streamed chats in flight, closed loop (a new one as soon as one ends),
  each ``service_tier: "flex"`` (the batch lane) with ``ignore_eos`` and 150 to 250 tokens;
- ``interactive`` sends one streamed chat of 16 tokens at a time (the interactive lane) and
  the client times each one's first content chunk (TTFT).

Phases in each block: quiet (no flood), then the flood at each K (by default 16, 32 and 64:
1x, 2x and 4x the engine's batch, so its waiting queue is not empty). In a flood phase the
flood first runs alone (its tokens/s alone), then the interactive tenant joins (its TTFTs
and the flood's tokens/s beside it).

Two sides (three with ``--anchor``), one server alive at a time, alternating per round
(A B, then B A):

- ``priority``: the worker as it runs by default, vLLM's ``scheduling_policy="priority"``
  with each request at its lane's priority (interactive 0, job 1, batch 2);
- ``fcfs``: the same worker with vLLM's ``--scheduling-policy fcfs`` (the engine serves its
  queue first come first served, as before lanes reached it);
- ``vllm-priority`` (``--anchor``): vLLM's own server with ``--scheduling-policy priority``
  and the same ``--max-num-seqs``, one tenant, the flood at ``priority`` 2 and the
  interactive chats at 0 in each request's body.

Worker flags reach the worker as ``BERTH_ENGINE_ARGS`` (what ``berth worker --max-num-seqs
16 --scheduling-policy fcfs`` folds them into). The report gives TTFT p50/p90 per phase and
side, each as a multiple of the same side's quiet p50 and against the other side, and the
flood's tokens/s; the raw figures go to ``benchmarks/results/mixed-load-<timestamp>.json``.
The machines are shared and noisy: read the ratios within one run, not absolute figures
across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.serve import (
    CLIENT,
    RESULTS_DIR,
    SETTLE_S,
    BerthServer,
    CpuMeter,
    Server,
    VllmServer,
    log,
    machine_info,
    show_logs,
    tiny_model,
    to_json,
    wait_quiet,
)

# The targets (issue 25): under every flood the interactive TTFT p50 stays within
# 5x quiet and its p90 within 1 s; the flood keeps 0.9x of its tokens/s alone.
TARGET_P50_X_QUIET = 5.0
TARGET_P90_MS = 1000.0
TARGET_FLOOD_KEPT = 0.9

KEYS = {"flood": "mixed-flood-key", "interactive": "mixed-interactive-key"}

SIDES: dict[str, dict[str, Any]] = {
    "priority": {},  # the worker's default
    "fcfs": {"scheduling_policy": "fcfs"},
}
# With --anchor: vLLM's own server with its priority scheduling, the flood at the batch
# lane's engine priority and the interactive chats at 0, in each request's body.
ANCHOR = "vllm-priority"

# What puts a request in its lane: berth's service tier, or vLLM's own priority field.
BERTH_LANES: dict[str, dict[str, Any]] = {"flood": {"service_tier": "flex"}, "interactive": {}}
VLLM_LANES: dict[str, dict[str, Any]] = {"flood": {"priority": 2}, "interactive": {"priority": 0}}

# Words the prompts are drawn from: each request's prompt differs, so prefix caching
# does not make one side's prefills cheaper than the other's.
WORDS = [
    "river",
    "stone",
    "lamp",
    "orbit",
    "cedar",
    "maple",
    "violet",
    "harbor",
    "quartz",
    "ember",
    "canyon",
    "meadow",
    "falcon",
    "lantern",
    "copper",
    "willow",
    "glacier",
    "prism",
    "thunder",
    "velvet",
    "saddle",
    "beacon",
    "marble",
    "tundra",
]


@dataclass
class Plan:
    """What one block runs."""

    max_num_seqs: int
    floods: list[int]
    flood_tokens: int
    flood_jitter: float
    interactive_tokens: int
    prompt_words: int
    ramp_s: float
    alone_s: float
    interactive_s: float
    min_samples: int
    drain_s: float
    rounds: int


def prompt(rng: random.Random, words: int) -> str:
    return "Continue this list: " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Flood:
    """K closed-loop streamed flex chats and what they have received so far."""

    url: str
    model: str
    plan: Plan
    rng: random.Random
    lane: dict[str, Any]
    chunks: int = 0
    completed: int = 0
    completed_chunks: int = 0
    completed_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, session: aiohttp.ClientSession, k: int) -> None:
        self.tasks = [asyncio.create_task(self._loop(session)) for _ in range(k)]

    async def stop(self) -> None:
        # closing the streams cancels the requests in berth (the client went away)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    def tokens_per_chunk(self) -> float:
        """Tokens a content chunk carries, from the usage of the completed requests."""
        if not self.completed_chunks or not self.completed_tokens:
            return 1.0
        return self.completed_tokens / self.completed_chunks

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            # lengths spread around flood_tokens: equal lengths started together finish
            # together, and the engine's batch would turn over in lockstep waves
            spread = self.plan.flood_tokens * self.plan.flood_jitter
            tokens = round(self.plan.flood_tokens + self.rng.uniform(-spread, spread))
            body = chat_body(self.model, prompt(self.rng, self.plan.prompt_words), tokens)
            body |= self.lane
            seen = 0

            def on_chunk() -> None:
                nonlocal seen
                seen += 1
                self.chunks += 1

            try:
                result = await stream_chat(session, self.url, KEYS["flood"], body, on_chunk)
            except (aiohttp.ClientError, TimeoutError) as err:
                self.errors.append(f"{type(err).__name__}: {err}"[:200])
                await asyncio.sleep(0.1)
                continue
            if result["error"]:
                self.errors.append(result["error"])
                await asyncio.sleep(0.1)
                continue
            self.completed += 1
            self.completed_chunks += seen
            self.completed_tokens += int(result["tokens"] or seen)


def chat_body(model: str, text: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    body: dict[str, Any],
    on_chunk: Any = None,
) -> dict[str, Any]:
    """One streamed chat: seconds to its first content chunk, completion tokens, error."""
    sent = time.perf_counter()
    first: float | None = None
    tokens = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
        if answer.status != 200:
            text = (await answer.text())[:200]
            return {"ttft_s": None, "tokens": 0, "error": f"{answer.status} {text}"}
        async for raw in answer.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                return {"ttft_s": None, "tokens": tokens, "error": str(chunk["error"])[:200]}
            if chunk.get("usage"):
                tokens = int(chunk["usage"].get("completion_tokens") or 0)
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    if first is None:
                        first = time.perf_counter() - sent
                    if on_chunk is not None:
                        on_chunk()
    return {"ttft_s": first, "tokens": tokens, "error": None}


async def interactive(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    plan: Plan,
    rng: random.Random,
    lane: dict[str, Any],
) -> dict[str, Any]:
    """One chat at a time for ``interactive_s`` (and at least ``min_samples`` of them)."""
    ttfts: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    # a cap on the window: under a bad flood a request may take many seconds
    cap = started + max(3 * plan.interactive_s, plan.interactive_s + 60)
    while time.monotonic() < cap:
        elapsed = time.monotonic() - started
        if elapsed >= plan.interactive_s and len(ttfts) >= plan.min_samples:
            break
        body = chat_body(model, prompt(rng, plan.prompt_words), plan.interactive_tokens)
        body |= lane
        result = await stream_chat(session, url, KEYS["interactive"], body)
        if result["error"] or result["ttft_s"] is None:
            errors.append(result["error"] or "no content")
            await asyncio.sleep(0.1)
            continue
        ttfts.append(1000.0 * result["ttft_s"])
    return {"ttft_ms": ttfts, "errors": errors[:5], "failed": len(errors)}


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def run_phase(
    url: str, model: str, k: int, plan: Plan, seed: int, lanes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One phase: the flood of ``k`` (none for 0) alone, then with the interactive tenant."""
    rng = random.Random(seed)
    limits = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(connector=limits, timeout=timeout) as session:
        flood = Flood(url, model, plan, random.Random(seed + 1), lanes["flood"])
        out: dict[str, Any] = {"k": k}
        if k:
            flood.start(session, k)
            await asyncio.sleep(plan.ramp_s)
            before, t0 = flood.chunks, time.monotonic()
            await asyncio.sleep(plan.alone_s)
            alone_chunks, alone_s = flood.chunks - before, time.monotonic() - t0
        before, t0 = flood.chunks, time.monotonic()
        out |= await interactive(session, url, model, plan, rng, lanes["interactive"])
        beside_chunks, beside_s = flood.chunks - before, time.monotonic() - t0
        out["interactive_s"] = round(beside_s, 3)
        if k:
            per_chunk = flood.tokens_per_chunk()
            await flood.stop()
            out |= {
                "flood_alone_tok_s": alone_chunks * per_chunk / alone_s,
                "flood_beside_tok_s": beside_chunks * per_chunk / beside_s,
                "flood_completed": flood.completed,
                "flood_tokens_per_chunk": per_chunk,
                "flood_failed": len(flood.errors),
                "flood_errors": flood.errors[:5],
            }
    return out


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ while the stack starts (BerthServer builds its roles'
    environment from ours)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MixedServer(BerthServer):
    """berth's stack with two tenants and the worker's engine flags of one side."""

    def __init__(self, tiny: Any, log_dir: Path, side: str, engine_args: dict[str, Any]) -> None:
        super().__init__(tiny, log_dir, fake_engine=False, lora=False)
        self.name = f"berth-{side}"
        self.engine_args = engine_args

    def launch(self) -> None:
        keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
        extra = {"BERTH_API_KEYS": keys, "BERTH_ENGINE_ARGS": json.dumps(self.engine_args)}
        with environ(extra):
            super().launch()

    def describe(self) -> dict[str, Any]:
        return {"engine_args": self.engine_args}


def block(server: Server, plan: Plan, args: argparse.Namespace, i: int) -> list[dict[str, Any]]:
    """One side's block of round ``i``: start, warm up, quiet, then every flood."""
    lanes = VLLM_LANES if isinstance(server, VllmServer) else BERTH_LANES
    server.launch()
    server.wait_ready(args.ready_timeout)
    url = f"http://127.0.0.1:{server.port}"
    model = server.tiny.name
    log(f"{server.name}: warm-up")
    warm = Plan(**{**plan.__dict__, "ramp_s": 2.0, "alone_s": 1.0, "interactive_s": 2.0})
    warm.min_samples = 2
    asyncio.run(run_phase(url, model, plan.max_num_seqs, warm, 1, lanes))
    time.sleep(plan.drain_s)
    roots: dict[str, int] = {CLIENT: os.getpid(), **server.roots()}
    other_before = wait_quiet(roots, args.quiet_wait)
    phases: list[dict[str, Any]] = []
    for k in [0, *plan.floods]:
        if (role := server.dead()) is not None:
            raise RuntimeError(f"{server.name}: {role} exited")
        time.sleep(SETTLE_S)
        meter = CpuMeter(roots)
        meter.start()
        phase = asyncio.run(run_phase(url, model, k, plan, 1000 * (i + 1) + k, lanes))
        sample = meter.stop()
        phase["round"] = i + 1
        phase["other_cores_before"] = other_before
        phase["other_cores"] = round(
            (sample["machine_cpu_s"] - sum(sample["processes_cpu_s"].values())) / sample["wall_s"],
            3,
        )
        phase["cpu"] = {
            "wall_s": round(sample["wall_s"], 3),
            "machine_cpu_s": round(sample["machine_cpu_s"], 3),
            "processes_cpu_s": {k: round(v, 3) for k, v in sample["processes_cpu_s"].items()},
        }
        ttft = phase["ttft_ms"]
        flood = (
            f", flood {phase['flood_alone_tok_s']:,.0f} tok/s alone, "
            f"{phase['flood_beside_tok_s']:,.0f} beside, {phase['flood_failed']} failed"
            if k
            else ""
        )
        log(
            f"{server.name} round {i + 1} {'quiet' if not k else f'K={k}'}: "
            f"TTFT p50 {pct(ttft, 50) or 0:,.0f} ms, p90 {pct(ttft, 90) or 0:,.0f} ms "
            f"({len(ttft)} requests, {phase['failed']} failed){flood}, "
            f"other processes {phase['other_cores']:.2f} cores"
        )
        phases.append(phase)
        time.sleep(plan.drain_s)  # the flood's cancelled requests leave the engine
    return phases


def summarize(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One side at one K over its rounds: the TTFTs pooled, the flood's tokens/s medians."""
    ttft = [t for p in phases for t in p["ttft_ms"]]
    out: dict[str, Any] = {
        "requests": len(ttft),
        "failed": sum(p["failed"] for p in phases),
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p90_ms": pct(ttft, 90),
        "ttft_p99_ms": pct(ttft, 99),
        "ttft_p50_ms_per_round": [pct(p["ttft_ms"], 50) for p in phases],
        "other_cores": [p["other_cores"] for p in phases],
    }
    if phases[0]["k"]:
        alone = [p["flood_alone_tok_s"] for p in phases]
        beside = [p["flood_beside_tok_s"] for p in phases]
        out |= {
            "flood_alone_tok_s": statistics.median(alone),
            "flood_beside_tok_s": statistics.median(beside),
            "flood_alone_tok_s_per_round": alone,
            "flood_beside_tok_s_per_round": beside,
            "flood_failed": sum(p["flood_failed"] for p in phases),
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(summary: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per side and flood: multiples of quiet, the targets; priority against fcfs."""
    out: dict[str, Any] = {}
    for side, by_k in summary.items():
        quiet = by_k.get(0, {}).get("ttft_p50_ms")
        for k, s in by_k.items():
            if not k:
                continue
            p50, p90 = s["ttft_p50_ms"], s["ttft_p90_ms"]
            x_quiet = p50 / quiet if p50 is not None and quiet else None
            # the flood beside interactive traffic against the same side's flood alone
            # (whether the flood alone runs as fast as before is priority / fcfs below)
            kept = s["flood_beside_tok_s"] / s["flood_alone_tok_s"]
            out.setdefault(side, {})[k] = {
                "ttft_p50_x_quiet": x_quiet,
                "flood_kept": kept,
                "met": {
                    "ttft_p50_x_quiet": x_quiet is not None and x_quiet <= TARGET_P50_X_QUIET,
                    "ttft_p90": p90 is not None and p90 <= TARGET_P90_MS,
                    "flood_kept": kept >= TARGET_FLOOD_KEPT,
                },
            }
    # berth's priority side against fcfs, and against the anchor when it ran
    for other in ("fcfs", ANCHOR):
        if other in summary:
            out[f"priority_over_{other}"] = versus(summary.get("priority", {}), summary[other])
    return out


def versus(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> dict[int, Any]:
    """Side ``a``'s figures over side ``b``'s, per flood."""
    return {
        k: {
            name: ratio(a[k].get(key), b[k].get(key))
            for name, key in (
                ("ttft_p50", "ttft_p50_ms"),
                ("ttft_p90", "ttft_p90_ms"),
                ("flood_alone_tok_s", "flood_alone_tok_s"),
                ("flood_beside_tok_s", "flood_beside_tok_s"),
            )
        }
        for k in sorted(set(a) & set(b))
    }


def report(summary: dict[str, dict[int, dict[str, Any]]], comp: dict[str, Any]) -> str:
    def num(value: float | None, unit: str = "", decimals: int = 0) -> str:
        return "-" if value is None else f"{value:,.{decimals}f}{unit}"

    header = (
        f"{'phase':<10}{'side':<14}{'n':>5}{'TTFT p50':>11}{'p90':>10}{'p99':>10}"
        f"{'x quiet':>9}{'flood alone':>13}{'beside':>9}{'kept':>7}  targets"
    )
    lines = [header, "-" * len(header)]
    ks = sorted({k for by_k in summary.values() for k in by_k})
    for k in ks:
        for side in [*SIDES, ANCHOR]:
            s = summary.get(side, {}).get(k)
            if s is None:
                continue
            c = comp.get(side, {}).get(k, {})
            row = f"{'quiet' if not k else f'K={k}':<10}{side:<14}{s['requests']:>5}"
            row += f"{num(s['ttft_p50_ms'], ' ms'):>11}{num(s['ttft_p90_ms'], ' ms'):>10}"
            row += f"{num(s['ttft_p99_ms'], ' ms'):>10}"
            if k:
                met = c["met"]
                marks = ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in met.items())
                row += f"{num(c['ttft_p50_x_quiet'], 'x', 1):>9}"
                row += f"{num(s['flood_alone_tok_s']):>13}{num(s['flood_beside_tok_s']):>9}"
                row += f"{num(c['flood_kept'], '', 2):>7}  {marks}"
            lines.append(row)
    for other in ("fcfs", ANCHOR):
        if comp.get(f"priority_over_{other}"):
            lines += [
                "",
                f"priority / {other} (same run):",
                *ratios(comp[f"priority_over_{other}"]),
            ]
    return "\n".join(lines)


def ratios(by_k: dict[int, dict[str, float | None]]) -> list[str]:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.3f}x"

    lines = []
    for k, r in by_k.items():
        lines.append(
            f"  {'quiet' if not k else f'K={k}':<8} TTFT p50 {num(r['ttft_p50'])}, "
            f"p90 {num(r['ttft_p90'])}"
            + (
                f", flood tok/s alone {num(r['flood_alone_tok_s'])}, "
                f"beside interactive {num(r['flood_beside_tok_s'])}"
                if k
                else ""
            )
        )
    return lines


def conclude(
    phases: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, Any]]:
    """Each side's phases summed up per flood, compared, and the table printed."""
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for side in [*SIDES, ANCHOR]:
        done = phases.get(side if side == ANCHOR else f"berth-{side}", [])
        for k in sorted({p["k"] for p in done}):
            summary.setdefault(side, {})[k] = summarize([p for p in done if p["k"] == k])
    comp = compare(summary)
    if summary:
        print(f"\n{report(summary, comp)}\n", flush=True)
    return summary, comp


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mixed_load",
        description="Interactive TTFT under a flood of flex chats: berth with the engine's "
        "priority scheduling against berth with --scheduling-policy fcfs, alternating.",
    )
    add = parser.add_argument
    add("--anchor", action="store_true",
        help=f"also vLLM's own server with --scheduling-policy priority ({ANCHOR})")  # fmt: skip
    add("--sides", default=None,
        help="comma-separated sides to run, of priority, fcfs and (with --anchor) "
        f"{ANCHOR} (all)")  # fmt: skip
    add("--quick", action="store_true",
        help="1 round, floods of 1x and 4x, shorter windows (~5 min)")  # fmt: skip
    add("--rounds", type=int, default=None, help="blocks per side, alternating (2; quick 1)")
    add("--max-num-seqs", type=int, default=16, help="the engine's batch (16)")
    add("--floods", default=None,
        help="comma-separated K, flood requests in flight (1x,2x,4x max-num-seqs)")  # fmt: skip
    add("--flood-tokens", type=int, default=200, help="tokens per flood request (200)")
    add("--flood-jitter", type=float, default=0.25,
        help="flood lengths uniform within +-this fraction of --flood-tokens (0.25)")  # fmt: skip
    add("--interactive-tokens", type=int, default=16, help="tokens per interactive chat (16)")
    add("--interactive-s", type=float, default=None,
        help="interactive window per phase, seconds (15; quick 8)")  # fmt: skip
    add("--alone-s", type=float, default=None,
        help="flood-alone window per phase, seconds (6; quick 4)")  # fmt: skip
    add("--min-samples", type=int, default=10, help="interactive requests per phase, at least")
    add("--ready-timeout", type=float, default=300.0, metavar="S", help="stack start limit")
    add("--quiet-wait", type=float, default=20.0, metavar="S",
        help="wait up to S seconds for other processes to leave the CPU first (20)")  # fmt: skip
    add("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    add("--report", type=Path, metavar="JSON",
        help="print the table of a saved run (its phases, summed up again) and exit")  # fmt: skip
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the stacks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        conclude(json.loads(args.report.read_text())["phases"])
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    n = args.max_num_seqs
    default_floods = [n, 4 * n] if args.quick else [n, 2 * n, 4 * n]
    plan = Plan(
        max_num_seqs=n,
        floods=[int(k) for k in args.floods.split(",")] if args.floods else default_floods,
        flood_tokens=args.flood_tokens,
        flood_jitter=args.flood_jitter,
        interactive_tokens=args.interactive_tokens,
        prompt_words=24,
        ramp_s=4.0,
        alone_s=args.alone_s or (4.0 if args.quick else 6.0),
        interactive_s=args.interactive_s or (8.0 if args.quick else 15.0),
        min_samples=args.min_samples,
        drain_s=3.0,
        rounds=args.rounds or (1 if args.quick else 2),
    )
    log_dir = Path(tempfile.mkdtemp(prefix="berth-mixed-"))
    log(f"logs: {log_dir}")
    tiny = tiny_model(wait_s=60)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    servers: list[Server] = [
        MixedServer(tiny, log_dir, side, {"max_num_seqs": n, **extra})
        for side, extra in SIDES.items()
    ]
    if args.anchor:
        flags = ["--scheduling-policy", "priority", "--max-num-seqs", str(n)]
        servers.append(VllmServer(tiny, log_dir, flags, ANCHOR))
    if args.sides:
        chosen = {f"berth-{x}" if x in SIDES else x for x in args.sides.split(",")}
        servers = [s for s in servers if s.name in chosen]
    phases: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    failures: dict[str, str] = {}
    for i in range(plan.rounds):
        # alternate the order (A B, B A) so drift on the shared machine hits both alike
        for server in servers if i % 2 == 0 else servers[::-1]:
            if server.name in failures:
                continue
            try:
                phases[server.name] += block(server, plan, args, i)
            except Exception as err:
                failures[server.name] = f"{type(err).__name__}: {err}"
                log(f"{server.name}: FAILED: {failures[server.name]}")
                show_logs(server)
            finally:
                server.stop()
    summary, comp = conclude(phases)
    record = {
        "timestamp": stamp,
        "machine": machine_info(),
        "plan": plan.__dict__,
        "sides": {s.name: s.describe() for s in servers},
        "targets": {
            "ttft_p50_x_quiet_max": TARGET_P50_X_QUIET,
            "ttft_p90_ms_max": TARGET_P90_MS,
            "flood_kept_min": TARGET_FLOOD_KEPT,
        },
        "summary": summary,
        "comparison": comp,
        "phases": phases,
        "failures": failures or None,
        "logs": str(log_dir),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"mixed-load-{stamp}.json"
    path.write_text(to_json(record))
    log(f"results: {path}")
    return 1 if failures or not summary else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: vLLM's triton import prints pages of nanobind "leaks" there
    os._exit(code)
