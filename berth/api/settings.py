"""Settings of an API process (`berth api`)."""

from __future__ import annotations

import functools
import json
from typing import Literal

from pydantic import Field, field_validator

from berth.limits import TenantLimits
from berth.plumbing.settings import (
    ColdStartSettings,
    CommonSettings,
    JobRecordSettings,
    ListenSettings,
)
from berth.protocol.limits import RequestLimits
from berth.webhooks.addresses import parse_url
from berth.webhooks.settings import WebhookSettings


# the common settings come first, then ListenSettings' host and port, then the webhook
# mixin's, then the API's own (fields gather from the last base to the first)
class ApiSettings(
    WebhookSettings, ListenSettings, CommonSettings, JobRecordSettings, ColdStartSettings
):
    """HTTP front end: where it listens, how much it queues, how long it waits."""

    processes: int = Field(
        default=1,
        ge=1,
        description="API processes accepting on the one port, each with an event loop of its "
        "own (one core each at most): more keep one tenant's flood of requests from queueing "
        "the others' behind it. See docs/operations.md.",
    )
    max_queue_per_model: int = Field(
        default=2048, ge=1, description="Queued requests per model before answering 429."
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After on 429 answers.")
    rate_memo_s: float = Field(
        default=1.0,
        ge=0,
        description="Once Redis finds a tenant over its requests per minute, this API process "
        "refuses the tenant's next requests itself for this long (never past the moment the "
        "rate admits one again), without asking Redis; 0: ask Redis every time.",
    )
    rate_refusal_hold_s: float = Field(
        default=1.0,
        ge=0,
        description="A refusal from the rate memo is answered after this long (never past "
        "the memo's end): a tenant flooding past its requests per minute gets one 429 per "
        "connection per hold instead of as many as it can send, and a client that honours "
        "Retry-After waits no longer; 0: answer at once.",
    )
    rate_window_frozen_at: float | None = Field(
        default=None,
        description="For tests only: every request counts against the rate limits in the "
        "minute of this moment (Unix seconds), at that point of it, whatever the time: the "
        "one-minute windows never turn, so a test's counts never fade at a minute's turn, "
        "however slow the machine. Leases and the rate memo keep to the real clock. Never set "
        "it in production: a tenant's counts would fade only when their keys expire.",
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a request may take end to end."
    )
    liveness_check_s: float = Field(
        default=1.0,
        gt=0,
        description="With no event for this long, check the request's worker is still alive.",
    )
    resume_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A streamed chat completion sent with `X-Berth-Resumable: true` keeps "
        "running this long after its client left, resumable with GET "
        "/v1/chat/completions/{id}/stream; 0 turns resuming off (every stream is cancelled "
        "when its client leaves, as without the header).",
    )
    keepalive_s: float = Field(
        default=15.0,
        gt=0,
        description="An event stream with nothing to send for this long gets an SSE comment "
        "(`: ping`), so proxies keep the connection open: job events, resumed streams, and "
        "streamed chat completions waiting in the queue.",
    )
    stream_headers: Literal["first-token", "immediate"] = Field(
        default="first-token",
        description="When a streamed chat completion answers: `first-token` waits for the "
        "first token (a request refused before it gets a real HTTP error) but at most "
        "keepalive_s, then sends headers and pings; `immediate` sends headers and pings at "
        "once (an early refusal is then an error event in a 200 stream). See "
        "docs/operations.md.",
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
    max_n: int = Field(
        default=RequestLimits().max_n, ge=1, description="Largest `n` a request may ask for."
    )
    max_body_bytes: int = Field(
        default=RequestLimits().max_body_bytes, ge=1, description="Largest request body."
    )
    request_limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Bounds on one request as JSON, e.g. "
        '{"max_json_schema_repetition": 5000}; names and defaults in docs/security.md '
        "(max_n and max_body_bytes come from their own settings).",
    )

    api_keys: str | None = Field(
        default=None,
        description="API keys as comma-separated tenant:key pairs. Required (or a file), "
        "unless --allow-anonymous.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve without API keys: anyone who reaches the port is one tenant. "
        "`berth up` sets it for the local stack; never for a shared deployment.",
    )
    api_keys_file: str | None = Field(
        default=None, description="File of tenant:key lines (# comments allowed)."
    )
    admin_keys: str | None = Field(
        default=None,
        description="Comma-separated keys for the admin API (adapter registry). Unset: the "
        "admin API is off.",
    )
    allow_lora_paths: bool = Field(
        default=False,
        description="Let lora_path name a directory under the workers' adapter root; off: "
        "lora_path must name a registered adapter, checked at the API.",
    )
    metrics_tenants: Literal["hashed", "named", "none"] = Field(
        default="hashed",
        description="The tenant label of /metrics: a short hash of the tenant's name, the "
        "name itself, or one label for all.",
    )
    ready_details: bool = Field(
        default=False,
        description="Let /ready say why it is unready (the Redis error's text).",
    )

    # per-tenant limits (0: unlimited); overrides per tenant in tenant_limits_file
    tenant_requests_per_minute: int = Field(
        default=TenantLimits().requests_per_minute,
        ge=0,
        description="Requests per tenant per minute, on every tenant route (chat, jobs, "
        "files, batches, models).",
    )
    tenant_tokens_per_minute: int = Field(
        default=TenantLimits().tokens_per_minute,
        ge=0,
        description="Tokens per tenant per minute: prompt (estimated, 4 characters a token) "
        "plus max tokens (assumed_max_tokens when unset) times n.",
    )
    tenant_concurrent_requests: int = Field(
        default=TenantLimits().concurrent_requests,
        ge=0,
        description="Chat requests per tenant in flight at once.",
    )
    tenant_queued_requests: int = Field(
        default=TenantLimits().queued_requests,
        ge=0,
        description="Queued requests per tenant per queue; its fair share may be less.",
    )
    tenant_file_bytes: int = Field(
        default=TenantLimits().file_bytes, ge=0, description="Bytes of stored files per tenant."
    )
    tenant_files: int = Field(
        default=TenantLimits().files, ge=0, description="Stored files per tenant."
    )
    tenant_open_batches: int = Field(
        default=TenantLimits().open_batches,
        ge=0,
        description="Batches per tenant not yet completed, failed, expired or cancelled.",
    )
    tenant_batch_lines: int = Field(
        default=TenantLimits().batch_lines, ge=0, description="Lines in one batch input file."
    )
    tenant_limits: str | None = Field(
        default=None,
        description='Per-tenant overrides as JSON, e.g. {"team-a": {"requests_per_minute": '
        "6000}}; names as the tenant_* settings without the prefix.",
    )
    tenant_limits_file: str | None = Field(
        default=None, description="A JSON file of per-tenant overrides (wins over the setting)."
    )
    fair_share_floor: int = Field(
        default=8,
        ge=1,
        description="Queued requests every tenant may hold however many share a full queue.",
    )
    assumed_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="Completion tokens a request without max tokens counts for its tenant.",
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

    tenant_webhooks: str | None = Field(
        default=None,
        description='Each tenant\'s default webhook as JSON, e.g. {"team-a": '
        '"https://hooks.example.com/berth"}: the end events of its jobs that name none, and of '
        "its batches. Needs webhook_secret.",
    )

    @field_validator("tenant_webhooks")
    @classmethod
    def _tenant_webhooks(cls, value: str | None) -> str | None:
        if value:
            _webhook_map(value)
        return value

    def webhook_default(self, tenant: str) -> str | None:
        """The tenant's default webhook, None when it has none or webhooks are off."""
        if not self.tenant_webhooks or not self.webhook_secret:
            return None
        return _webhook_map(self.tenant_webhooks).get(tenant)

    def tenant_defaults(self) -> TenantLimits:
        prefix = "tenant_"
        return TenantLimits(
            **{name: getattr(self, prefix + name) for name in TenantLimits.model_fields}
        )

    def limits(self) -> RequestLimits:
        return self.request_limits.model_copy(
            update={"max_n": self.max_n, "max_body_bytes": self.max_body_bytes}
        )


@functools.cache
def _webhook_map(text: str) -> dict[str, str]:
    """tenant_webhooks as a dict; ValueError naming what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError("tenant_webhooks is a JSON object: tenant -> webhook URL")
    for url in data.values():
        parse_url(url)
    return data
