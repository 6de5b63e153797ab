"""Fixtures for the worker tests: the tiny model, its tokenizer, and one real vLLM engine.

The real engine takes ~20 s to start, so one is shared by the whole session. vLLM's
``AsyncLLM`` binds to the event loop it first runs on, so the fixture and every
test that uses it run on the session loop (``loop_scope="session"``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.workers.tinymodel import TinyModel, ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    """The generated tiny model (cached under $BERTH_CACHE_DIR or ~/.cache/berth)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: TinyModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model.path)


@pytest.fixture
def chat_request() -> Callable[..., ChatCompletionRequest]:
    """Build a validated request: ``chat_request(temperature=0.5, ...)``."""

    def build(**fields: Any) -> ChatCompletionRequest:
        body: dict[str, Any] = {
            "model": "berth-tiny",
            "messages": [{"role": "user", "content": "Hello there, how are you?"}],
        }
        body.update(fields)
        return parse_chat_request(body)

    return build


@pytest.fixture(scope="session")
def adapter_root(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter root for ``lora_path``: the tiny adapters, and one no engine can load."""
    root = tmp_path_factory.mktemp("adapters")
    for name, path in tiny_model.adapters.items():
        shutil.copytree(path, root / name)
    # rank 16 is above the engines' max_lora_rank of 8; vLLM finds out when it loads it
    shutil.copytree(tiny_model.adapters["tiny-lora-a"], root / "too-big")
    config = json.loads((root / "too-big" / "adapter_config.json").read_text())
    config["r"] = 16
    (root / "too-big" / "adapter_config.json").write_text(json.dumps(config))
    return root


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine(tiny_model: TinyModel, adapter_root: Path) -> AsyncIterator[Any]:
    """One real vLLM CPU engine serving the tiny model, hermes tool parser, both adapters."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from berth.workers.engine import EngineConfig, make_engine

    config = EngineConfig(
        model=str(tiny_model.path),
        served_model_name=tiny_model.name,
        max_model_len=512,
        max_loras=2,
        max_lora_rank=8,
        adapters={name: str(path) for name, path in tiny_model.adapters.items()},
        adapter_root=str(adapter_root),
        tool_call_parser="hermes",
        kv_cache_space_gib=1,
    )
    engine = make_engine(config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()
