"""`berth api --processes 2`: two API processes accept on one port, each a whole API (its
own instance in Redis); /metrics sums both; one killed is started again while the other
serves; SIGTERM stops them all. Real processes on a real server, fake engine."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import psutil
import pytest
import redis

from berth.plumbing.lifeline import GRACE_S
from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

PROCESSES = 2
# a bound on what waits for a process to start, stop or announce itself: it catches
# "never"; a loaded machine's slow start must not trip it
WAIT_S = 90.0
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        ("worker", FAKE_ENGINE), "scheduler", ("api", {"BERTH_PROCESSES": str(PROCESSES)})
    )


def _supervisor(stack: RunningStack) -> psutil.Process:
    pid = next(proc.pid for role, proc in stack.stack.processes if role == "api")
    return psutil.Process(pid)


def _api_processes(stack: RunningStack) -> list[psutil.Process]:
    return _supervisor(stack).children()


def _instances(stack: RunningStack) -> set[str]:
    with redis.Redis.from_url(stack.redis_url) as client:
        return {m.decode() for m in client.zrange(keys.APIS_INDEX, 0, -1)}


def _live_instances(stack: RunningStack) -> set[str]:
    """The indexed instances whose record has not expired: a killed process's record stays
    indexed (nothing withdrew it) but expires API_ALIVE_S after its last refresh."""
    with redis.Redis.from_url(stack.redis_url) as client:
        return {m for m in _instances(stack) if client.exists(keys.api_key(m))}


def _until(what: str, done: object) -> None:
    assert callable(done)
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.2)


def _served_on_new_connections(stack: RunningStack, n: int) -> list[int]:
    """``n`` chat completions, each on a connection of its own (so both processes accept)."""
    statuses = []
    for _ in range(n):
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            statuses.append(client.post("/v1/chat/completions", json=CHAT).status_code)
    return statuses


def _counted(metrics: str, route: str) -> float:
    pattern = rf'^berth_api_http_requests_total{{[^}}]*route="{re.escape(route)}"[^}}]*}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, metrics, re.MULTILINE))


def test_each_process_is_an_api_of_its_own(stack: RunningStack) -> None:
    children = _api_processes(stack)
    assert len(children) == PROCESSES
    _until("every process has its instance record", lambda: len(_instances(stack)) == PROCESSES)
    clients = [httpx.Client(base_url=stack.url, timeout=30) for _ in range(40)]
    try:
        assert [c.post("/v1/chat/completions", json=CHAT).status_code for c in clients] == [
            200
        ] * 40
        # the kernel spreads connections over the processes by address (SO_REUSEPORT): 40
        # open connections all on one of two processes would be a chance of 2**-39
        held = {
            child.pid: sum(
                1
                for c in child.net_connections("tcp")
                if c.laddr and c.laddr.port == stack.port and c.status == psutil.CONN_ESTABLISHED
            )
            for child in children
        }
        assert sum(held.values()) == 40
        assert all(held.values()), held
    finally:
        for client in clients:
            client.close()


def test_metrics_count_the_answers_of_every_process(stack: RunningStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        before = _counted(client.get("/metrics").text, "/v1/chat/completions")
    n = 30
    assert _served_on_new_connections(stack, n) == [200] * n
    # the samples of both processes, whichever process answers /metrics
    for _ in range(4):
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            after = _counted(client.get("/metrics").text, "/v1/chat/completions")
        assert after - before == n


def test_a_killed_process_is_started_again(stack: RunningStack) -> None:
    victim = _api_processes(stack)[0]
    old_instances = _instances(stack)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(WAIT_S)
    # the other one serves meanwhile
    assert _served_on_new_connections(stack, 5) == [200] * 5
    _until(
        "a new process replaces the killed one",
        lambda: len([p for p in _api_processes(stack) if p.pid != victim.pid]) == PROCESSES,
    )
    _until(
        "the new process has an instance of its own",
        lambda: len(_instances(stack) - old_instances) >= 1,
    )
    assert _served_on_new_connections(stack, 10) == [200] * 10
    # the killed process's record expires; until then it would count as a live process
    _until(
        "the killed process's record expires",
        lambda: len(_live_instances(stack) & old_instances) == PROCESSES - 1,
    )


def test_sigterm_stops_every_process(stack: RunningStack) -> None:
    supervisor = _supervisor(stack)
    # every process has announced itself (/ready, which the stack waited for, is one
    # process's answer; the other may still be starting, on a loaded machine for seconds)
    _until(
        "every process has its instance record", lambda: len(_live_instances(stack)) == PROCESSES
    )
    children = supervisor.children()
    recorded = _live_instances(stack)
    supervisor.send_signal(signal.SIGTERM)
    # the supervisor kills a process still there after GRACE_S: the bound catches "never"
    assert supervisor.wait(GRACE_S + WAIT_S) == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    # each withdrew its record on the way out
    assert not recorded & _instances(stack)


def test_a_killed_supervisor_takes_its_processes_with_it(make_stack: StackFactory) -> None:
    with make_stack(ready=False) as running:
        running.start("api", BERTH_PROCESSES=str(PROCESSES))
        running._wait(WAIT_S, "/health", lambda body: body.get("status") == "ok")
        supervisor = _supervisor(running)
        _until("every process started", lambda: len(supervisor.children()) == PROCESSES)
        children = supervisor.children()
        supervisor.kill()
        supervisor.wait(WAIT_S)
        # each was told by the kernel (its parent-death signal) and stopped as on SIGTERM
        gone, alive = psutil.wait_procs(children, timeout=WAIT_S)
        assert not alive
