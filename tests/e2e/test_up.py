"""`berth up` on its embedded defaults: no REDIS_URL, no model. It serves, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import openai
import psutil
import pytest

from tests.stack import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


def _ctrl_c_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# the tiny model's generation and engine start take minutes on a loaded machine; the
# test's own bounds (400 s to the banner, a minute to stop) catch "never"
@pytest.mark.timeout(900)
def test_up_serves_and_stops_everything() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BERTH_REDIS_URL")}
    env["BERTH_LOG_LEVEL"] = "WARNING"
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (outlives the process)
    up = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        # its own process group, so the Ctrl-C below reaches the group as a terminal's would
        start_new_session=True,
        # and Ctrl-C's default action, as in a terminal: a run started in the background of
        # a non-interactive shell ignores SIGINT, and its children would inherit that
        preexec_fn=_ctrl_c_default,
    )
    started: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        banner = []
        deadline = time.monotonic() + 400
        for line in up.stdout:
            banner.append(line)
            if line.startswith("curl "):
                break
            assert time.monotonic() < deadline, "berth up did not become ready"
        printed = "".join(banner)
        assert f"http://127.0.0.1:{port}" in printed
        assert '"model": "berth-tiny"' in printed

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="berth-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("length", "stop")

        started = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert all(role in names for role in ("worker", "scheduler", "api", "valkey"))
        # one session for the whole stack (Linux schedules a session as one group: Valkey
        # and the API must share the engine's yields, berth/local.py), a group per role
        assert {os.getsid(p.pid) for p in started} == {os.getsid(up.pid)}
        assert all(os.getpgid(p.pid) != os.getpgid(up.pid) for p in started)
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets SIGINT
        code = up.wait(60)
    assert code == 0
    errors.seek(0)
    assert "Traceback" not in errors.read()
    # what outlived `berth up` by a moment (Valkey's keeper stops it once up is gone) stops
    # soon after; the bound catches "never"
    deadline = time.monotonic() + 60
    while left := [p for p in started if _alive(p)]:
        assert time.monotonic() < deadline, [p.cmdline() for p in left]
        time.sleep(0.2)


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (no parent left to reap it here)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
