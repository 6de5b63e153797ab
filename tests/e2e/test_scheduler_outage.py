"""A scheduler process keeps turning through a Redis outage that catches it publishing:
kombu retries the publish on its own thread (scheduler/publish.py) while the event loop
goes on refreshing the replica's liveness proof; once Redis is back every queued request
reaches its worker's queue."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import redis

from berth.plumbing.liveness import age_s
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, WorkerInfo
from berth.store import queue
from tests.stack import RunningStack, free_port
from tests.valkey import Valkey

pytestmark = pytest.mark.e2e

WORKER = "w1"
QUEUED = 20_000
# rounds of "queue a backlog, kill Redis while it is dispatched": a kill that lands between
# two publishes catches none in flight, and that round proves nothing
ROUNDS = 8
# a bound that catches "never"; a publish waits at most kombu's retry budget (~15 s)
NEVER_S = 60.0


def _publishes_waiting(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("berth_scheduler_publishes_waiting "):
                return float(line.split()[1])
    raise AssertionError("the scheduler exports no berth_scheduler_publishes_waiting")


def _register(client: redis.Redis) -> None:
    info = WorkerInfo(
        id=WORKER, model="m", capacity=10**6, queue=keys.worker_queue(WORKER), ttl_s=3600
    )
    pipe = client.pipeline()
    pipe.set(keys.worker_key(WORKER), info.model_dump_json(), ex=3600)
    pipe.zadd(keys.WORKERS_INDEX, {WORKER: time.time() + 3600})
    pipe.execute()


def _queue(client: redis.Redis, round_: int) -> list[str]:
    ids = [f"r{round_}-{i}" for i in range(QUEUED)]
    pipe = client.pipeline(transaction=False)
    for request_id in ids:
        entry = queue.encode_entry(QueuedRequest(id=request_id, model="m", request={}))
        pipe.xadd(keys.ingress_stream("m"), entry)  # type: ignore[arg-type]
    pipe.execute()
    return ids


def _sent(client: redis.Redis) -> set[str]:
    sent = set()
    for raw in client.lrange(keys.worker_queue(WORKER), 0, -1):
        args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        sent |= {q["id"] for q in args[0]["requests"]}
    return sent


def _wait(condition: object, what: str, state: object = str) -> None:
    assert callable(condition) and callable(state)
    deadline = time.monotonic() + NEVER_S
    while not condition():
        assert time.monotonic() < deadline, f"never: {what} ({state()})"
        time.sleep(0.02)


def _round(
    stack: RunningStack, valkey: Valkey, client: redis.Redis, n: int, metrics_port: int, proof: Path
) -> bool:
    """Queue a backlog and kill Redis while it is dispatched; whether a publish was caught
    in flight (and the loop went on turning while it waited)."""
    queued = set(_queue(client, n))
    _wait(lambda: client.llen(keys.worker_queue(WORKER)) > 0, "a first dispatch")
    valkey.kill()
    time.sleep(0.2)
    caught = _publishes_waiting(metrics_port) == 1
    if caught:
        # the proof is refreshed (every second) while the publish still waits
        killed = time.time()
        _wait(lambda: (age_s(proof) or NEVER_S) < time.time() - killed, "a refresh")
        assert _publishes_waiting(metrics_port) == 1
        assert stack.stack.dead() is None
    valkey.start()
    _wait(
        lambda: queued <= _sent(client),
        "every request dispatched",
        lambda: (
            f"{len(queued - _sent(client))} missing, "
            f"{client.xpending(keys.ingress_stream('m'), keys.SCHEDULER_GROUP)}"
        ),
    )
    client.delete(keys.worker_queue(WORKER))
    return caught


def test_the_scheduler_turns_while_a_publish_waits_out_an_outage(
    valkey: Valkey, tmp_path: Path
) -> None:
    metrics_port = free_port()
    proof = tmp_path / "scheduler.alive"
    client = redis.Redis.from_url(valkey.url)
    _register(client)
    with RunningStack(valkey.url) as stack:
        stack.start(
            "scheduler",
            BERTH_SCHEDULER_ID="s1",
            BERTH_METRICS_PORT=str(metrics_port),
            BERTH_METRICS_HOST="127.0.0.1",
            BERTH_HEALTH_FILE=str(proof),
        )
        caught = any(_round(stack, valkey, client, n, metrics_port, proof) for n in range(ROUNDS))
        assert caught, f"no kill in {ROUNDS} rounds caught a publish in flight"
        assert stack.stack.dead() is None
