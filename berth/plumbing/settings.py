"""Settings every berth process shares; each role extends this with its own class."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis

from berth.plumbing.logcontext import IDS, ContextFilter, json_formatter, text_formatter
from berth.plumbing.redisconn import DEFAULT_REDIS_CONNECTIONS, redis_client

__all__ = [
    "DEFAULT_REDIS_CONNECTIONS",
    "CommonSettings",
    "JobRecordSettings",
    "ListenSettings",
    "MetricsSettings",
    "ModelsFileSettings",
    "ColdStartSettings",
    "ServedModelSettings",
    "redis_client",
]

# every settings class and mixin: BERTH_<NAME> variables, other variables left alone
_CONFIG = SettingsConfigDict(env_prefix="BERTH_", extra="ignore", populate_by_name=True)


class CommonSettings(BaseSettings):
    """Redis location and logging, read from flags or BERTH_* environment variables."""

    model_config = _CONFIG

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("redis_url", "BERTH_REDIS_URL", "REDIS_URL"),
        description="Redis or Valkey URL (env REDIS_URL). `berth up` starts an embedded "
        "Valkey when it is not set.",
    )
    log_level: str = Field(default="INFO", description="Logging level.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or as one JSON object each (time, level, role, "
        "logger, message, request/job/batch/worker ids where known, trace_id) for log "
        "pipelines; see docs/operations.md.",
    )
    redis_max_connections: int = Field(
        default=DEFAULT_REDIS_CONNECTIONS,
        ge=4,
        description="Connections to Redis per process; beyond them commands wait for one.",
    )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SystemExit(
                "REDIS_URL is not set: pass --redis-url or set REDIS_URL "
                "(`berth up` starts an embedded Valkey for you)"
            )
        return self.redis_url

    def redis(self) -> Redis:
        """A client whose pool waits for a free connection instead of failing when all are
        busy, so a burst of requests queues for a moment rather than ending in errors."""
        return redis_client(self.require_redis_url(), self.redis_max_connections)


class JobRecordSettings(BaseSettings):
    """Mixin for every role that writes job, file or batch records (all three do: the API
    creates them, the scheduler ends and requeues them, the worker finishes them), so each
    writes the same expiry."""

    model_config = _CONFIG

    job_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long job, file and batch records are kept."
    )


class ListenSettings(BaseSettings):
    """Mixin for where the API listens: its own settings, and `berth up`'s, which hands them
    to the API it starts."""

    model_config = _CONFIG

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, description="Port to listen on.")


class ServedModelSettings(BaseSettings):
    """Mixin for what a worker serves: its own settings, and `berth up`'s, which hands them
    to the worker it starts."""

    model_config = _CONFIG

    model: str | None = Field(
        default=None,
        description="Model directory or name to serve. Unset: generate and serve the tiny "
        "random-weight test model (CPU only, gibberish output).",
    )
    fake_engine: bool = Field(
        default=False, description="Serve with the deterministic fake engine (tests, benchmarks)."
    )


class ModelsFileSettings(BaseSettings):
    """Mixin for every role: the model catalog file each seeds the catalog from at start."""

    model_config = _CONFIG

    models_file: str | None = Field(
        default=None,
        description="The model catalog: a YAML (or JSON) file `models: [{name: NAME, "
        "adapters: [NAME or {name, path}]}]`, written to Redis at each role's start; the "
        "admin API adds and removes entries at run time. A declared model is listed and "
        "queued whether or not a worker runs it (see docs/operations.md, scale to zero).",
    )


class ColdStartSettings(ModelsFileSettings):
    """Mixin for the API and the scheduler: how long a chat waits for a declared model's
    first worker."""

    cold_start_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="A chat or text completion for a declared model no live worker serves "
        "waits this long in the queue for one (streams get SSE pings meanwhile), then ends "
        "with 503 and Retry-After; 0: 503 at once. Jobs and batch lines wait until their "
        "own deadline.",
    )


class MetricsSettings(CommonSettings):
    """Common settings plus where a role without an HTTP API serves Prometheus metrics."""

    metrics_port: int | None = Field(
        default=None, description="Serve Prometheus metrics on this port (unset: off)."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address of the metrics server.")


def setup_logging(settings: CommonSettings, role: str) -> None:
    """One log format for every role, so a request id can be followed across processes:
    text, or JSON lines carrying the ids of berth/plumbing/logcontext.py."""
    handler = logging.StreamHandler()
    # the process's own ids (a worker's, a scheduler's) are on every line it logs
    process_ids = {
        name: value for name in IDS if isinstance(value := getattr(settings, name, None), str)
    }
    handler.addFilter(ContextFilter(role, process_ids))
    handler.setFormatter(
        json_formatter() if settings.log_format == "json" else text_formatter(role)
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
