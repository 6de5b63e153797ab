"""Settings of a scheduler process (`berth scheduler`)."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from berth.settings import MetricsSettings


class SchedulerSettings(MetricsSettings):
    """Grouping and dispatch knobs; several replicas may run with the same settings."""

    scheduler_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Consumer name in the ingress consumer group (unique per replica).",
    )
    max_group_size: int = Field(
        default=32, ge=1, description="Flush a group at this many requests."
    )
    max_group_wait_ms: float = Field(
        default=2.0, ge=0, description="Flush a group when its oldest request waited this long."
    )
    read_count: int = Field(default=256, ge=1, description="Entries read per XREADGROUP call.")
    registry_refresh_s: float = Field(
        default=0.25, gt=0, description="How often the worker registry and model list are reread."
    )
    no_worker_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A request that found no live worker for this long ends with an error.",
    )
