"""What one engine serves and how vLLM is set up for it.

Built once per worker process from its settings and handed to
:func:`berth.workers.engine.make_engine`; nothing here imports vLLM.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """The model, its adapters and parsers, and the vLLM engine arguments berth sets."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="Model directory or Hugging Face name.")
    served_model_name: str | None = Field(
        default=None, description="Name clients use in `model` (default: `model`)."
    )
    aliases: list[str] = Field(
        default_factory=list, description="Further names clients may use for the model."
    )
    tokenizer: str | None = Field(default=None, description="Tokenizer (default: the model's).")
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0

    # LoRA: adapters are loaded on first use and evicted LRU beyond max_loras.
    enable_lora: bool = True
    max_loras: int = Field(default=4, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    adapters: dict[str, str] = Field(
        default_factory=dict, description="Registered adapters: name -> directory."
    )
    adapter_root: str | None = Field(
        default=None,
        description="Directory inside which a request's `lora_path` may name an adapter.",
    )

    # vLLM parser names (see vllm/tool_parsers and vllm/reasoning).
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    # CPU build only: KV-cache GiB, set as VLLM_CPU_KVCACHE_SPACE for the engine process
    # (None leaves the environment, and so vLLM's default, alone).
    kv_cache_space_gib: float | None = Field(default=None, gt=0)

    # The compile step (berth.workers.engine.grammar): what one output constraint may cost.
    grammar_timeout_s: float = Field(default=10.0, gt=0)
    grammar_loop_s: float = Field(default=0.5, gt=0)
    grammar_memory_mib: int = Field(default=1024, ge=16)
    grammar_cache_size: int = Field(default=4096, ge=0)

    # Any further vllm.AsyncEngineArgs fields, passed through unchanged.
    engine_args: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        """The served model name."""
        return self.served_model_name or self.model
