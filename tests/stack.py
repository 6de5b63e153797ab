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
from typing import Any

from berth.local import Stack


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
        env.update(self.env)
        env.update(extra)
        return env

    def start(self, *roles: str, **extra: str) -> None:
        for role in roles:
            self.stack.start(role, self.role_env(**extra))

    def wait_ready(self, timeout_s: float = 300.0, workers: int = 1) -> None:
        """Until GET /ready answers 200 with ``workers`` live workers (and a scheduler)."""
        self._wait(timeout_s, "/ready", lambda body: body.get("workers", 0) >= workers)

    def wait_served(self, timeout_s: float = 300.0) -> None:
        """Until the API lists a model: for stacks started without a scheduler."""
        self._wait(timeout_s, "/v1/models", lambda body: bool(body.get("data")))

    def _wait(self, timeout_s: float, path: str, done: Callable[[dict[str, Any]], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if (role := self.stack.dead()) is not None:
                raise RuntimeError(f"{role} exited while the stack started")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as answer:
                    if done(json.load(answer)):
                        return
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.3)
        raise TimeoutError(f"stack not ready after {timeout_s}s: {last}")

    def stop(self) -> None:
        self.stack.stop(grace_s=15)
