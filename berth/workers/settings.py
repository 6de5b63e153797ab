"""Settings of a worker process (`berth worker`)."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from berth.plumbing.settings import (
    JobRecordSettings,
    MetricsSettings,
    ModelsFileSettings,
    ServedModelSettings,
)
from berth.protocol import keys

# Readers count a worker dead once no newer beat of it came through a heartbeat TTL, so a
# beat may be late by the TTL less one interval (the worker's loop held up under load, a
# slow Redis) before a live worker counts as dead: a short TTL needs a shorter interval.
HEARTBEAT_INTERVAL_S = 1.0
BEATS_PER_TTL = 4
MIN_BEATS_PER_TTL = 3


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(ServedModelSettings, MetricsSettings, JobRecordSettings, ModelsFileSettings):
    """One worker: one engine on one GPU group, fed by its own Celery queue."""

    worker_id: str = Field(default_factory=_default_worker_id, description="Unique worker id.")
    served_model_name: str | None = Field(
        default=None,
        description="Name clients use in `model` (default: --model as given, as vLLM's "
        "server names it: a Hugging Face id, or the path). Several names, as vLLM takes "
        "them (--served-model-name a b, or a,b): the first is the one answers, queues and "
        "metrics carry, the others reach the same model.",
    )
    capacity: int = Field(default=256, ge=1, description="Requests the worker accepts at once.")
    group_concurrency: int = Field(
        default=64, ge=1, description="Groups served at once (Celery threads feeding the engine)."
    )
    heartbeat_interval: float = Field(
        default=HEARTBEAT_INTERVAL_S,
        gt=0,
        description=f"Seconds between heartbeats. Unset: {HEARTBEAT_INTERVAL_S:g} s, or the "
        f"heartbeat TTL / {BEATS_PER_TTL} when that is shorter; set, at most the TTL / "
        f"{MIN_BEATS_PER_TTL}.",
    )
    heartbeat_ttl: float = Field(
        default=keys.WORKER_TTL_S,
        gt=0,
        description="Seconds the heartbeat record lives; a worker with no newer heartbeat "
        "through this long of successful registry reads counts as dead.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per engine.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use."
    )
    max_model_len: int | None = Field(default=None, description="Context length (model default).")
    enable_prefix_caching: bool = Field(default=True, description="vLLM prefix caching.")
    enable_lora: bool | None = Field(
        default=None,
        description="Run the engine with LoRA. Unset: on when adapters or an adapter root "
        "are configured (LoRA layers cost engine throughput even when no request uses them; "
        "turn it on to accept adapters registered at run time).",
    )
    max_loras: int = Field(default=4, ge=1, description="LoRA adapters held at once.")
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank accepted.")
    # NoDecode: the validator below reads the JSON, so an empty value (compose's default) is
    # no adapters rather than a JSON error
    adapters: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='Registered LoRA adapters as JSON {"name": "/path"}.',
    )
    adapter_root: str | None = Field(
        default=None, description="Directory inside which `lora_path` may name adapters."
    )
    tool_call_parser: str | None = Field(default=None, description="vLLM tool-call parser name.")
    reasoning_parser: str | None = Field(default=None, description="vLLM reasoning parser name.")
    grammar_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest one output constraint (schema, regex, grammar) may take to "
        "compile; over it the request gets 400.",
    )
    grammar_loop_s: float = Field(
        default=0.5,
        gt=0,
        description="Longest the part of a constraint's compile that vLLM repeats on the "
        "worker's event loop may take; over it the request gets 400.",
    )
    grammar_memory_mib: int = Field(
        default=1024, ge=16, description="Memory one constraint's compile may use (MiB)."
    )
    grammar_cache_size: int = Field(
        default=4096, ge=0, description="Constraints whose compile verdict a worker remembers."
    )
    origin_check_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the API processes holding running requests are checked; the "
        "requests of one that died are cancelled (resumable streams after their grace).",
    )
    drain_s: float = Field(
        default=60.0,
        ge=0,
        description="After SIGTERM: seconds the worker lets its running requests finish, "
        "taking no new ones, before it hands the rest back to be continued elsewhere and "
        "exits. Keep it below the pod's terminationGracePeriodSeconds (docs/operations.md).",
    )
    kv_cache_space_gib: int = Field(default=1, ge=1, description="CPU build: KV-cache GiB.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM engine arguments (AsyncEngineArgs fields, vLLM's names) as "
        'JSON, e.g. {"dtype": "bfloat16", "max_num_seqs": 128}. On the command line give '
        "vLLM's own flags instead (--dtype bfloat16 --max-num-seqs 128); they win over this.",
    )
    vllm_otlp_traces_endpoint: str | None = Field(
        default=None,
        description="vLLM's own OTLP trace endpoint (its `otlp_traces_endpoint`, gRPC, e.g. "
        "http://jaeger:4317): vLLM's request span then joins berth's trace of the request.",
    )
    health_file: str | None = Field(
        default=None,
        description="The worker's local proof of life, refreshed every heartbeat once its "
        "engine started, for `berth check worker --local` (no Redis needed). Unset: "
        "`berth-worker-<id>.alive` in the temp directory (TMPDIR).",
    )
    fake_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Fake engine: tokens per second per request (unset: no delay).",
    )

    def served_names(self) -> list[str]:
        """The names given with --served-model-name, in order (none: the default name)."""
        return [n for n in re.split(r"[\s,]+", self.served_model_name or "") if n]

    @model_validator(mode="after")
    def _beats_fit_in_a_ttl(self) -> Self:
        if "heartbeat_interval" not in self.model_fields_set:
            self.heartbeat_interval = min(HEARTBEAT_INTERVAL_S, self.heartbeat_ttl / BEATS_PER_TTL)
        elif self.heartbeat_interval * MIN_BEATS_PER_TTL > self.heartbeat_ttl:
            raise ValueError(
                f"heartbeat_interval must leave at least {MIN_BEATS_PER_TTL} beats in a "
                f"heartbeat_ttl (at most {self.heartbeat_ttl / MIN_BEATS_PER_TTL:g} s with "
                f"heartbeat_ttl {self.heartbeat_ttl:g} s), got {self.heartbeat_interval:g} s"
            )
        return self

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters_from_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value
