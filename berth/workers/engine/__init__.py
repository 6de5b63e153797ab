"""The engine a worker runs: real vLLM (the only place berth imports it) or the fake.

Importing this package does not import vLLM; :func:`make_engine` does, and only
when the real engine is asked for.
"""

from __future__ import annotations

from typing import Any

from berth.workers.engine.base import ChoiceDelta, Engine, EngineStep, FinishReason
from berth.workers.engine.config import EngineConfig

__all__ = ["ChoiceDelta", "Engine", "EngineConfig", "EngineStep", "FinishReason", "make_engine"]


def make_engine(
    config: EngineConfig | None,
    fake: bool = False,
    *,
    served_model_name: str | None = None,
    **fake_options: Any,
) -> Engine:
    """The real vLLM engine for ``config``, or with ``fake`` the deterministic fake.

    ``fake_options`` go to :class:`~berth.workers.engine.fake.FakeEngine`
    (``tokens_per_s``, ``max_concurrency``, ``max_model_len``, ...).
    """
    if fake:
        from berth.workers.engine.fake import FakeEngine

        name = served_model_name or (config.name if config else None)
        adapters = fake_options.pop("adapters", None)
        if config is not None:
            adapters = adapters or sorted(config.adapters)
            if config.max_model_len:
                fake_options.setdefault("max_model_len", config.max_model_len)
        return FakeEngine(served_model_name=name, adapters=adapters, **fake_options)
    if config is None:
        raise ValueError("the real engine needs an EngineConfig")
    if fake_options:
        raise TypeError(f"options for the fake engine only: {', '.join(fake_options)}")
    if served_model_name is not None:
        config = config.model_copy(update={"served_model_name": served_model_name})
    from berth.workers.engine.vllm_engine import VllmEngine

    return VllmEngine(config)
