"""A worker's settings: its heartbeat interval fits its heartbeat TTL."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from berth.cli import parse
from berth.workers.settings import WorkerSettings


def test_an_unset_interval_leaves_four_beats_in_a_short_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings().heartbeat_interval == 1.0
    assert WorkerSettings(heartbeat_ttl=2).heartbeat_interval == 0.5
    # a long TTL keeps the beat a second apart: placement reads the worker's load from it
    assert WorkerSettings(heartbeat_ttl=30).heartbeat_interval == 1.0
    monkeypatch.setenv("BERTH_HEARTBEAT_TTL", "3")
    worker = parse(["worker"])
    assert isinstance(worker, WorkerSettings) and worker.heartbeat_interval == 0.75


def test_a_set_interval_must_leave_three_beats_in_a_ttl() -> None:
    assert WorkerSettings(heartbeat_ttl=2, heartbeat_interval=0.6).heartbeat_interval == 0.6
    with pytest.raises(ValidationError, match="at most 0.666667 s with heartbeat_ttl 2 s"):
        WorkerSettings(heartbeat_ttl=2, heartbeat_interval=1)
