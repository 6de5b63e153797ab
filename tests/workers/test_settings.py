"""A worker's settings: its heartbeat interval fits its heartbeat TTL; its served name."""

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


def test_the_served_name_defaults_to_the_model_as_given() -> None:
    # as vLLM's server names it: a client sending the Hugging Face id finds the model
    from berth.workers.main import engine_config

    hub = WorkerSettings(model="meta-llama/Llama-3.1-8B-Instruct")
    assert engine_config(hub).name == "meta-llama/Llama-3.1-8B-Instruct"
    local = WorkerSettings(model="/models/llama-3-8b/")
    assert engine_config(local).name == "/models/llama-3-8b/"
    named = WorkerSettings(model="/models/llama-3-8b", served_model_name="llama-3-8b")
    assert engine_config(named).name == "llama-3-8b"


def test_several_served_names_as_vllm_takes_them() -> None:
    from berth.workers.main import engine_config

    for argv in (
        ["--served-model-name", "llama", "meta/llama-3"],
        ["--served-model-name", "llama,meta/llama-3"],
    ):
        settings = parse(["worker", "--model", "/m", *argv, "--worker-id", "w"])
        assert isinstance(settings, WorkerSettings)
        assert settings.served_names() == ["llama", "meta/llama-3"]
        assert settings.worker_id == "w"
        config = engine_config(settings)
        assert (config.name, config.aliases) == ("llama", ["meta/llama-3"])
