"""The webhook settings: the secret and the private-destination rule every role that takes
or sends a webhook agrees on (API and scheduler), and the delivery loop's own (scheduler)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from berth.webhooks.signing import secret_key


class WebhookSettings(BaseSettings):
    """Mixin of the API (which takes a job's or batch's webhook) and the scheduler (which
    delivers it)."""

    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore", populate_by_name=True)

    webhook_secret: str | None = Field(
        default=None,
        description="Signs webhook deliveries per Standard Webhooks, in the `whsec_<base64>` "
        "form openai-python's `client.webhooks.unwrap` takes; the same value on the API and "
        "the scheduler. Unset: webhooks are off (a job or batch naming one gets 400, and no "
        "tenant default applies). See docs/jobs.md.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhooks go to private, loopback, link-local and other non-global "
        "addresses (checked after DNS, on submission and every attempt). Off by default: a "
        "webhook must not reach inside the cluster (docs/security.md).",
    )

    @field_validator("webhook_secret")
    @classmethod
    def _secret_form(cls, value: str | None) -> str | None:
        if value is not None:
            secret_key(value)  # raises ValueError naming the form
        return value


class DeliverySettings(WebhookSettings):
    """Mixin of the role that runs the delivery loop (the scheduler)."""

    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A webhook attempt (resolve, connect, send, status line) that takes "
        "longer fails and is retried.",
    )
    webhook_concurrency: int = Field(
        default=64, ge=1, description="Webhook attempts in flight at once per replica."
    )
    webhook_per_host: int = Field(
        default=8,
        ge=1,
        description="Webhook attempts in flight at once per destination host (as many more "
        "wait their turn, the rest stay in the outbox): a slow receiver holds at most these, "
        "never the other receivers' turn.",
    )
    webhook_backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait before a failed webhook's first retry; each later wait is as long "
        "as the event's age, so waits double (5 s, 10 s, 20 s, ...) up to webhook_backoff_max_s.",
    )
    webhook_backoff_max_s: float = Field(
        default=1800.0, gt=0, description="Longest wait between two attempts of a webhook."
    )
    webhook_retry_for_s: float = Field(
        default=86400.0,
        gt=0,
        description="A webhook not delivered this long after its event is given up on (kept "
        "in the stream berth:webhooks:failed).",
    )
    webhook_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="Longest the delivery loop waits before looking for due webhooks again "
        "(a new event wakes it at once).",
    )
