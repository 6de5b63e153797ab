"""`berth up` killed with SIGKILL leaves nothing behind: every role and the embedded Valkey
notice it is gone and exit, and the API's port is free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.stack import free_port

pytestmark = pytest.mark.e2e


def _port_free(port: int) -> bool:
    """Free for a new server, as uvicorn binds: SO_REUSEADDR, so the closed connections
    still in TIME_WAIT do not count, a listener left behind does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_roles_stop_when_up_is_killed() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BERTH_REDIS_URL")}
    env["BERTH_LOG_LEVEL"] = "WARNING"
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (outlives the process)
    up = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "up", "--fake-engine", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if line.startswith("curl "):
                break
        else:
            errors.seek(0)
            raise AssertionError(f"berth up did not become ready:\n{errors.read()}")
        started = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert all(role in names for role in ("worker", "scheduler", "api", "valkey")), names

        up.send_signal(signal.SIGKILL)  # berth up alone: no Ctrl-C, no cleanup of its own
        up.wait()

        # generous: the roles drain and stop on their own well before this
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (any(_alive(p) for p in started)):
            time.sleep(0.25)
        left = [p.cmdline() for p in started if _alive(p)]
        assert left == [], left
        assert _port_free(port)
    finally:
        for proc in started:  # never leave the machine with strays, even on failure
            if _alive(proc):
                proc.kill()
        if up.poll() is None:
            up.kill()
            up.wait()
