"""Runs berth's roles as real processes for end-to-end tests, and stops them afterwards."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import redis

from berth.local import Stack

# a role to start: its name, or its name and environment of its own
Role = str | tuple[str, dict[str, str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningStack:
    """A stack of berth processes sharing one Redis, with the API on ``url``."""

    redis_url: str
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    stack: Stack = field(default_factory=Stack)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def role_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, REDIS_URL=self.redis_url, BERTH_PORT=str(self.port))
        env.update(BERTH_LOG_LEVEL="WARNING", VLLM_CPU_KVCACHE_SPACE="1")
        # test stacks run key-less unless a test sets keys (`berth api` refuses otherwise)
        env.update(BERTH_ALLOW_ANONYMOUS="true")
        env.update(self.env)
        env.update(extra)
        return env

    def start(self, *roles: str, **extra: str) -> None:
        for role in roles:
            self.stack.start(role, self.role_env(**extra))

    def start_roles(self, *roles: Role) -> None:
        for role in roles:
            if isinstance(role, str):
                self.start(role)
            else:
                self.start(role[0], **role[1])

    def wait_ready(self, timeout_s: float = 300.0, workers: int = 1) -> None:
        """Until GET /ready answers 200 and counts ``workers`` live workers and a scheduler
        (the API is ready without them; the stack serves once they are there)."""
        self._wait(
            timeout_s,
            "/ready",
            lambda body: body.get("workers", 0) >= workers and body.get("schedulers", 0) >= 1,
        )

    def live_workers(self) -> int:
        """How many live workers the API counts (its /ready body); -1 when it is unready."""
        answer = httpx.get(f"{self.url}/ready", timeout=10)
        return int(answer.json()["workers"]) if answer.status_code == 200 else -1

    def wait_served(self, timeout_s: float = 300.0, api_key: str | None = None) -> None:
        """Until the API lists a model: for stacks started without a scheduler (asking
        with ``api_key`` when the stack has keys)."""
        self._wait(timeout_s, "/v1/models", lambda body: bool(body.get("data")), api_key)

    def _wait(
        self,
        timeout_s: float,
        path: str,
        done: Callable[[dict[str, Any]], bool],
        api_key: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if (role := self.stack.dead()) is not None:
                raise RuntimeError(f"{role} exited while the stack started")
            try:
                ask = urllib.request.Request(f"{self.url}{path}", headers=headers)
                with urllib.request.urlopen(ask, timeout=2) as answer:
                    if done(json.load(answer)):
                        return
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.3)
        raise TimeoutError(f"stack not ready after {timeout_s}s: {last}")

    def stop(self) -> None:
        """Stop every role started so far; a second call finds nothing left to stop."""
        self.stack.stop(grace_s=15)
        self.stack.processes.clear()

    def __enter__(self) -> RunningStack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


# the fake engine, for plumbing tests that need no model
FAKE_ENGINE = {"BERTH_FAKE_ENGINE": "true"}


class StackFactory:
    """Builds RunningStacks on one Redis server and remembers them, to stop them all."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.started: list[RunningStack] = []

    def __call__(
        self,
        *roles: Role,
        env: dict[str, str] | None = None,
        ready: bool = True,
        timeout_s: float = 60,
        workers: int = 1,
    ) -> RunningStack:
        """A stack running ``roles`` (a name, or a name and its own environment) on a flushed
        database; with ``ready``, once /ready counts ``workers`` live workers."""
        with redis.Redis.from_url(self.redis_url) as client:
            client.flushdb()
        running = RunningStack(self.redis_url, env=dict(env or {}))
        self.started.append(running)
        try:
            running.start_roles(*roles)
            if ready:
                running.wait_ready(timeout_s, workers=workers)
        except BaseException:
            running.stop()
            raise
        return running

    def stop_all(self) -> None:
        for running in self.started:
            running.stop()
