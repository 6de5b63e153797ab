"""The probes against real processes (fake engine) and a Valkey the test stops: a worker's
and a scheduler's liveness (`berth check ROLE --local`) hold while Redis is away and fail
once the process stops turning; the API is ready with no worker at all, and unready only
while Redis is away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from berth.plumbing.liveness import REFRESH_S
from tests.stack import FAKE_ENGINE, RunningStack
from tests.valkey import Valkey

pytestmark = pytest.mark.e2e

# bounds that catch "never"; the tests wait on conditions, not on these
WITHIN_S = 120.0
# the outage the liveness must ride out: this many refreshes of the proof
OUTAGE_REFRESHES = 5


def _until(condition: Callable[[], bool], what: str, timeout_s: float = WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


IDS = {"worker": "w-probe", "scheduler": "s-probe"}


def _check(stack: RunningStack, role: str, *args: str) -> int:
    """`berth check ROLE ...` as a probe runs it: in the process's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "check", role, *args],
        env=stack.role_env(**{f"BERTH_{role.upper()}_ID": IDS[role]}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode


def _pid(stack: RunningStack, role: str) -> int:
    return next(p.pid for r, p in stack.stack.processes if r == role)


@pytest.fixture
def stack(valkey: Valkey, tmp_path: Path) -> Iterator[RunningStack]:
    # TMPDIR: the roles' liveness files (and the checks' defaults) under this test's own
    env = {**FAKE_ENGINE, "TMPDIR": str(tmp_path), "BERTH_HEARTBEAT_TTL": "3"}
    running = RunningStack(valkey.url, env=env)
    try:
        running.start("worker", BERTH_WORKER_ID=IDS["worker"])
        running.start("scheduler", BERTH_SCHEDULER_ID=IDS["scheduler"])
        running.start("api")
        running.wait_ready(WITHIN_S)
        yield running
    finally:
        if valkey.process is None or valkey.process.poll() is not None:
            valkey.start()  # a clean stop deregisters in Redis: not a retry's worth of wait
        running.stop()


def test_liveness_holds_while_redis_is_away_and_fails_when_the_loop_stops(
    stack: RunningStack, valkey: Valkey, tmp_path: Path
) -> None:
    # the documented default place: the temp directory, named by the role and its id
    worker_proof = tmp_path / "berth-worker-w-probe.alive"
    scheduler_proof = tmp_path / "berth-scheduler-s-probe.alive"
    assert worker_proof.exists() and scheduler_proof.exists()
    assert _check(stack, "worker", "--local") == 0
    assert _check(stack, "scheduler", "--local") == 0

    # Redis hangs (no answer, no refusal): the roles' commands wait out socket timeouts
    # and retries, minutes in all, the hardest outage for a loop that also proves life
    assert valkey.process is not None
    valkey.process.send_signal(signal.SIGSTOP)
    try:
        away = time.time()
        # the record in Redis is out of reach: the Redis check fails, the local ones do not
        assert _check(stack, "worker") == 1
        while worker_proof.stat().st_mtime < away + OUTAGE_REFRESHES * REFRESH_S:
            assert _check(stack, "worker", "--local") == 0
            assert _check(stack, "scheduler", "--local") == 0
            assert time.time() - away < WITHIN_S, "the worker's proof was not refreshed"
        assert scheduler_proof.stat().st_mtime > away + OUTAGE_REFRESHES * REFRESH_S
        assert stack.stack.dead() is None, "a role exited while Redis was away"
    finally:
        valkey.process.send_signal(signal.SIGCONT)

    # a stopped worker refreshes nothing: unhealthy once its proof is older than the bound
    worker = _pid(stack, "worker")
    os.killpg(worker, signal.SIGSTOP)
    try:
        _until(
            lambda: _check(stack, "worker", "--local", "--max-age", "2") == 1,
            "a stopped worker's liveness failed",
        )
        # the scheduler is another process: its liveness is its own
        assert _check(stack, "scheduler", "--local", "--max-age", "2") == 0
    finally:
        os.killpg(worker, signal.SIGCONT)
    _until(
        lambda: _check(stack, "worker", "--local", "--max-age", "2") == 0,
        "the resumed worker's liveness passed again",
    )

    scheduler = _pid(stack, "scheduler")
    os.killpg(scheduler, signal.SIGSTOP)
    try:
        _until(
            lambda: _check(stack, "scheduler", "--local", "--max-age", "2") == 1,
            "a stopped scheduler's liveness failed",
        )
    finally:
        os.killpg(scheduler, signal.SIGCONT)

    # a clean stop takes the proofs away: no later process is vouched for by them
    stack.stop()
    assert not worker_proof.exists()
    assert not scheduler_proof.exists()


def test_api_is_ready_without_workers_and_unready_without_redis(valkey: Valkey) -> None:
    with RunningStack(valkey.url) as stack:
        stack.start("api")  # no worker, no scheduler: jobs and the model list still work

        def ready_without_workers() -> bool:
            try:
                answer = httpx.get(f"{stack.url}/ready", timeout=10)
            except httpx.TransportError:
                return False  # not listening yet
            if answer.status_code != 200:
                return False
            assert answer.json() == {"status": "ready", "workers": 0, "schedulers": 0}
            return True

        _until(ready_without_workers, "the API was ready with no worker")
        models = httpx.get(f"{stack.url}/v1/models", timeout=10)
        assert models.status_code == 200 and models.json()["data"] == []

        valkey.kill()
        try:

            def unready() -> bool:
                answer = httpx.get(f"{stack.url}/ready", timeout=30)
                if answer.status_code == 200:
                    return False
                assert answer.status_code == 503
                assert answer.json()["reason"] == "redis unreachable"
                return True

            _until(unready, "the API was unready while Redis was away")
            # liveness is not readiness: the process still answers
            assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
        finally:
            valkey.start()
        _until(ready_without_workers, "the API was ready again once Redis was back")
