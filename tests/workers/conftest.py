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
    from berth.cli import parse
    from berth.workers.engine import make_engine
    from berth.workers.main import engine_config
    from berth.workers.settings import WorkerSettings

    # built as `berth worker` builds it, from its command line: vLLM's own engine flags
    # (--dtype, --max-num-seqs, --seed) beside berth's (test_engine_vllm.py checks them)
    settings = parse(
        [
            "worker",
            *("--model", str(tiny_model.path), "--served-model-name", tiny_model.name),
            *("--max-model-len", "512", "--max-loras", "2", "--max-lora-rank", "8"),
            *("--adapters", json.dumps({n: str(p) for n, p in tiny_model.adapters.items()})),
            *("--adapter-root", str(adapter_root), "--tool-call-parser", "hermes"),
            *("--kv-cache-space-gib", "1"),
            *("--dtype", "float32", "--max-num-seqs", "16", "--seed", "7"),
        ]
    )
    assert isinstance(settings, WorkerSettings)
    config = engine_config(settings)
    engine = make_engine(config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()
