"""The worker's local proof of life (its probes' file) through the engine host, on a fake
engine whose start the test holds: absent until the engine runs, fresh while the heartbeat
loop turns, gone after a clean stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from berth.check import check_proof
from berth.workers.engine.fake import FakeEngine
from berth.workers.runtime import EngineHost
from berth.workers.settings import WorkerSettings


class HeldEngine(FakeEngine):
    """The fake engine, whose start lasts until the test lets it end (a model loading)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def start(self) -> None:
        await asyncio.to_thread(self.release.wait)
        await super().start()


def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.05)


def test_the_proof_is_written_once_the_engine_runs(redis_url: str, tmp_path: Path) -> None:
    proof = tmp_path / "worker.alive"
    proof.write_text("left by an earlier process under the same id")
    engine = HeldEngine()
    settings = WorkerSettings(
        redis_url=redis_url,
        worker_id="w-probe",
        heartbeat_interval=0.1,
        heartbeat_ttl=1,
        health_file=str(proof),
    )
    host = EngineHost(engine, settings)
    starting = threading.Thread(target=host.start)
    starting.start()
    try:
        # the earlier process's proof vouches for nothing: gone before the engine starts
        _until(lambda: not proof.exists())
        time.sleep(0.5)  # several beats' worth: none writes a proof while the engine loads
        assert not check_proof(proof, 30)
        engine.release.set()
        starting.join(30)
        _until(lambda: check_proof(proof, 30))
        refreshed = proof.stat().st_mtime
        _until(lambda: proof.stat().st_mtime > refreshed)  # refreshed every beat
    finally:
        engine.release.set()
        starting.join(30)
        host.stop()
    assert not proof.exists()
