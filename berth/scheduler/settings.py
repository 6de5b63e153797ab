"""Settings of a scheduler process (`berth scheduler`)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field

from berth.plumbing.settings import ColdStartSettings, JobRecordSettings, MetricsSettings
from berth.webhooks.settings import DeliverySettings


class SchedulerSettings(DeliverySettings, MetricsSettings, JobRecordSettings, ColdStartSettings):
    """Grouping and dispatch knobs, and webhook delivery; several replicas may run with the
    same settings."""

    scheduler_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Consumer name in the ingress consumer group (unique per replica).",
    )
    max_group_size: int = Field(
        default=32, ge=1, description="Flush a group at this many requests."
    )
    max_group_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Flush a group when its oldest request waited this long. Only a burst "
        "waits: a request with no other of its group read within this time before it is "
        "sent at once.",
    )
    read_count: int = Field(default=256, ge=1, description="Entries read per XREADGROUP call.")
    registry_refresh_s: float = Field(
        default=0.25, gt=0, description="How often the worker registry and model list are reread."
    )
    placement: Literal["affinity", "fcfs"] = Field(
        default="affinity",
        description="affinity: send a worker requests only for the adapters opened on it (at "
        "most max_loras, handed over after a quantum), least loaded, prompt_cache_key "
        "affinity. fcfs: round robin, for comparison.",
    )
    prefix_placement: bool = Field(
        default=True,
        description="affinity: place base-model work where its prompt's prefix was sent "
        "before (the shared prefix index), among the workers within prefix_band_tenths of "
        "the least loaded. False: by load and prompt_cache_key only.",
    )
    prefix_band_tenths: int = Field(
        default=2,
        ge=0,
        le=10,
        description="prefix_placement: workers at most this many tenths of capacity more "
        "loaded than the least loaded compete on their cached prefix; a worker loaded "
        "beyond that loses its prefixes to the others.",
    )
    prefix_index_blocks: int = Field(
        default=4096,
        ge=1,
        description="prefix_placement: prompt blocks (256 bytes of text, ~64 tokens) kept "
        "per worker in the prefix index, least recently sent dropped first; set it near "
        "the worker's KV cache size in tokens / 64. About 82 bytes of Redis each.",
    )
    adapter_quantum: float = Field(
        default=1.0,
        gt=0,
        description="affinity: while other adapters wait, an adapter keeps a worker's LoRA "
        "slot for this many times the worker's mean run time (first output to end).",
    )
    aging_s: float = Field(
        default=30.0,
        gt=0,
        description="Every this many seconds waited moves a group up one priority lane.",
    )
    batch_reserve: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Share of a worker's capacity batch work leaves free for interactive work.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs of a job before a dying worker fails it for good."
    )
    maintenance_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often dead replicas' entries and dead workers' jobs are recovered.",
    )
    no_worker_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A request for a model the catalog does not declare that found no live "
        "worker for this long ends with an error (a declared model's chats wait "
        "cold_start_wait_s, its jobs and batch lines until their deadline).",
    )
    health_file: str | None = Field(
        default=None,
        description="The scheduler's local proof of life, refreshed every second by its "
        "event loop, for `berth check scheduler --local` (no Redis needed). Unset: "
        "`berth-scheduler-<id>.alive` in the temp directory (TMPDIR).",
    )
