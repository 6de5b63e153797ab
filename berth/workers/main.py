"""`berth worker`: start the engine host, then a Celery worker consuming this worker's queue."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from berth.protocol import keys
from berth.workers.celery_app import create_worker_app
from berth.workers.engine import make_engine
from berth.workers.engine.base import Engine
from berth.workers.engine.config import EngineConfig
from berth.workers.runtime import EngineHost
from berth.workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def engine_config(settings: WorkerSettings) -> EngineConfig:
    """The engine configuration; with no model given, the generated tiny test model."""
    names = settings.served_names()
    model, served, adapters = settings.model, (names[0] if names else None), dict(settings.adapters)
    tool_parser, reasoning_parser = settings.tool_call_parser, settings.reasoning_parser
    if model is None:
        from berth.workers.tinymodel import ensure_tiny_model

        tiny = ensure_tiny_model()
        model, served = str(tiny.path), served or tiny.name
        adapters = {name: str(path) for name, path in tiny.adapters.items()} | adapters
        tool_parser = tool_parser or "hermes"
    enable_lora = settings.enable_lora
    if enable_lora is None:
        enable_lora = bool(adapters or settings.adapter_root)
    return EngineConfig(
        model=model,
        enable_lora=enable_lora,
        # as vLLM's server names it: the model as given (a Hugging Face id, or the path)
        served_model_name=served or model,
        aliases=names[1:],
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        adapters=adapters,
        adapter_root=settings.adapter_root,
        tool_call_parser=tool_parser,
        reasoning_parser=reasoning_parser,
        kv_cache_space_gib=settings.kv_cache_space_gib,
        grammar_timeout_s=settings.grammar_timeout_s,
        grammar_loop_s=settings.grammar_loop_s,
        grammar_memory_mib=settings.grammar_memory_mib,
        grammar_cache_size=settings.grammar_cache_size,
        engine_args=(
            {"otlp_traces_endpoint": settings.vllm_otlp_traces_endpoint}
            if settings.vllm_otlp_traces_endpoint
            else {}
        )
        | settings.engine_args,
    )


def build_engine(settings: WorkerSettings) -> Engine:
    if settings.fake_engine:
        return make_engine(
            None,
            fake=True,
            served_model_name=next(iter(settings.served_names()), None),
            adapters=sorted(settings.adapters),
            tokens_per_s=settings.fake_tokens_per_s,
        )
    return make_engine(engine_config(settings))


def run_worker(settings: WorkerSettings, engine: Engine | None = None) -> None:
    """Serve until stopped; ``engine`` replaces the configured one (simulations)."""
    redis_url = settings.require_redis_url()
    host = EngineHost(engine if engine is not None else build_engine(settings), settings)
    host.start()
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    app = create_worker_app(redis_url, host)
    try:
        # threads, never prefork: the engine must not be forked once it started
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.group_concurrency}",
                f"--queues={keys.worker_queue(settings.worker_id)}",
                f"--hostname={settings.worker_id}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--loglevel={settings.log_level}",
            ]
        )
    finally:
        host.stop()
