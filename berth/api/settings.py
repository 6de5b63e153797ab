"""Settings of an API process (`berth api`)."""

from __future__ import annotations

from pydantic import Field

from berth.protocol.limits import RequestLimits
from berth.settings import CommonSettings, JobRecordSettings


class ApiSettings(CommonSettings, JobRecordSettings):
    """HTTP front end: where it listens, how much it queues, how long it waits."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, description="Port to listen on.")
    max_queue_per_model: int = Field(
        default=2048, ge=1, description="Queued requests per model before answering 429."
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After on 429 answers.")
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a request may take end to end."
    )
    liveness_check_s: float = Field(
        default=1.0,
        gt=0,
        description="With no event for this long, check the request's worker is still alive.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Times a request whose worker died before its first token is queued again.",
    )
    registry_refresh_s: float = Field(
        default=0.5, gt=0, description="How often the list of live workers is reread."
    )
    model_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="A model whose workers all vanished is still queued for this long (they "
        "may be late or restarting) before requests get 503.",
    )
    max_n: int = Field(default=16, ge=1, description="Largest `n` a request may ask for.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1, description="Largest request body.")
    request_limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Bounds on one request as JSON, e.g. "
        '{"max_json_schema_repetition": 5000}; names and defaults in docs/security.md '
        "(max_n and max_body_bytes come from their own settings).",
    )

    api_keys: str | None = Field(
        default=None,
        description="API keys as comma-separated tenant:key pairs. Unset (and no file): open.",
    )
    api_keys_file: str | None = Field(
        default=None, description="File of tenant:key lines (# comments allowed)."
    )
    admin_keys: str | None = Field(
        default=None,
        description="Comma-separated keys for the admin API (adapter registry). Unset: the "
        "admin API is open when berth runs without API keys, and off otherwise.",
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest file accepted by POST /v1/files (OpenAI's bound: 200 MB); "
        "enforced while the upload streams in, with 413.",
    )
    max_file_lines: int = Field(
        default=50_000, ge=1, description="Most lines in an uploaded batch file (OpenAI's bound)."
    )
    upload_stall_s: float = Field(
        default=20.0,
        gt=0,
        description="An upload that sends nothing for this long, or averages under 4 KB/s "
        "once this long has passed, ends with 408.",
    )
    batch_window: int = Field(
        default=1000,
        ge=1,
        description="Most requests of one batch queued or running at once; the rest stay "
        "lines of the input file until earlier ones end.",
    )

    def limits(self) -> RequestLimits:
        return self.request_limits.model_copy(
            update={"max_n": self.max_n, "max_body_bytes": self.max_body_bytes}
        )
