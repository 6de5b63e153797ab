"""Per-tenant limits as pure policy: what each limit is, which applies to a tenant, what a
request costs, and what a refused client is told (``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers). The counting itself is atomic in Redis
(``berth/limits/lua/*.lua``, through ``berth/limits/store.py``); this module
holds the arithmetic both sides agree on, so it is tested without Redis.

Rates use a sliding window approximated from two fixed one-minute windows (the previous
window's count weighted by how much of it still overlaps the last 60 s, plus the current
window's count), as the script does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

WINDOW_S = 60
# OpenAI's bounds on one batch input file
OPENAI_BATCH_LINES = 50_000


class TenantLimits(BaseModel):
    """Every per-tenant limit; 0 means unlimited. ``docs/security.md`` gives each one's
    default and the threat it answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int = Field(default=6000, ge=0)
    # prompt (estimated from its characters) plus the completion tokens asked for
    tokens_per_minute: int = Field(default=20_000_000, ge=0)
    concurrent_requests: int = Field(default=256, ge=0)
    # queued requests of one tenant in one queue, below its fair share (0: the share only)
    queued_requests: int = Field(default=0, ge=0)
    file_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    files: int = Field(default=1000, ge=0)
    open_batches: int = Field(default=16, ge=0)
    batch_lines: int = Field(default=OPENAI_BATCH_LINES, ge=0)


class LimitBook:
    """The defaults and each tenant's overrides (a partial TenantLimits per tenant)."""

    def __init__(self, defaults: TenantLimits, overrides: dict[str, dict[str, int]]) -> None:
        self.defaults = defaults
        self._by_tenant = {
            tenant: TenantLimits.model_validate(defaults.model_dump() | fields)
            for tenant, fields in overrides.items()
        }

    def of(self, tenant: str) -> TenantLimits:
        return self._by_tenant.get(tenant, self.defaults)


def read_overrides(spec: str | None, file: str | None) -> dict[str, dict[str, int]]:
    """Tenant -> partial limits, from a JSON setting and/or a JSON file (the file wins)."""
    overrides: dict[str, dict[str, int]] = {}
    for text in (spec, Path(file).read_text() if file else None):
        if not text:
            continue
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("tenant limits are a JSON object: tenant -> {limit: value}")
        for tenant, fields in data.items():
            TenantLimits.model_validate(fields)  # unknown names and bad values fail here
            overrides.setdefault(tenant, {}).update(fields)
    return overrides


def prompt_chars(request: dict[str, Any]) -> int:
    """Characters of a request's prompt: message contents and tool definitions, or a text
    completion's prompt (its token ids at four characters a token)."""
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return 4 * len(prompt)
    total = 0
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif content:
            total += len(json.dumps(content))
    if request.get("tools"):
        total += len(json.dumps(request["tools"]))
    return total


def request_cost(prompt_chars: int, max_tokens: int | None, n: int, assumed_max: int) -> int:
    """Tokens a request counts against tokens_per_minute: its prompt estimated at four
    characters a token (the API does not tokenize), plus the completion tokens it may
    produce (``assumed_max`` when the request sets no cap), for each of its ``n`` choices."""
    return math.ceil(prompt_chars / 4) + n * (max_tokens or assumed_max)


def fair_share(queue_bound: int, active_tenants: int, floor: int) -> int:
    """How many queued requests one tenant may hold in a queue shared by ``active_tenants``
    (counting itself): an equal part of the bound, never less than ``floor``."""
    return max(queue_bound // max(active_tenants, 1), min(floor, queue_bound))


def window(now: float) -> tuple[int, float]:
    """The current window's number and how far into it ``now`` is (0..1)."""
    index = int(now // WINDOW_S)
    return index, (now - index * WINDOW_S) / WINDOW_S


# what :func:`window` answers: how a moment maps to a window and how far into it
Windows = Callable[[float], tuple[int, float]]


def frozen_window(at: float) -> Windows:
    """For tests only (the API's ``rate_window_frozen_at``): a :func:`window` that answers
    for the moment ``at`` whatever moment it is asked about. The minute never turns, so
    what a test counted never fades into the previous window's weight, however long the
    test takes. Only the rate windows stop: leases, the rate memo and key expiries keep
    to the real clock."""
    fixed = window(at)

    def frozen(_now: float) -> tuple[int, float]:
        return fixed

    return frozen


def used(previous: int, current: int, elapsed: float) -> int:
    """The sliding-window count: as the script computes it."""
    return math.floor(previous * (1 - elapsed)) + current


def wait_s(previous: int, current: int, elapsed: float, cost: int, limit: int) -> float:
    """Seconds until ``cost`` more fits under ``limit`` (0 when it fits now): the moment
    after which it fits, as :func:`used` (and the script) round the faded count down.
    ``floor(n * (1 - t)) <= k`` holds once ``n * (1 - t) < k + 1``, not ``<= k``."""
    room = limit - cost
    if room < 0:
        return math.inf
    if used(previous, current, elapsed) <= room:
        return 0.0
    if current <= room and previous > 0:
        # later in this window the previous window's weight has fallen far enough
        t = (1 - elapsed) - (room - current + 1) / previous
        return max(t, 0.0) * WINDOW_S
    # in the next window, this window's count is the one that fades
    x = 1 - (room + 1) / current if current else 0.0
    return ((1 - elapsed) + max(x, 0.0)) * WINDOW_S


def reset_s(previous: int, current: int, elapsed: float) -> float:
    """Seconds until the whole limit is free again."""
    if current:
        return (2 - elapsed) * WINDOW_S
    if previous:
        return (1 - elapsed) * WINDOW_S
    return 0.0


def duration(seconds: float) -> str:
    """OpenAI's form of a reset time: ``"1s"``, ``"6m0s"``, ``"20ms"``."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Counts(BaseModel):
    """What the admission script saw (before this request, if it was refused)."""

    allowed: bool
    refused: str = ""  # requests, tokens, concurrent, queued, queue_full
    requests_previous: int = 0
    requests_current: int = 0
    tokens_previous: int = 0
    tokens_current: int = 0
    running: int = 0
    queued: int = 0
    queue_limit: int = 0


def moved_on(counts: Counts, windows: int) -> Counts:
    """The rate counts ``windows`` minutes later, with nothing counted meanwhile: the
    current window becomes the previous one."""
    if windows <= 0:
        return counts
    if windows == 1:
        return counts.model_copy(
            update={
                "requests_previous": counts.requests_current,
                "requests_current": 0,
                "tokens_previous": counts.tokens_current,
                "tokens_current": 0,
            }
        )
    return counts.model_copy(
        update={
            "requests_previous": 0,
            "requests_current": 0,
            "tokens_previous": 0,
            "tokens_current": 0,
        }
    )


def rate_headers(limits: TenantLimits, counts: Counts, elapsed: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for a tenant's request and token rates."""
    headers: dict[str, str] = {}
    rates = (
        ("requests", limits.requests_per_minute, counts.requests_previous, counts.requests_current),
        ("tokens", limits.tokens_per_minute, counts.tokens_previous, counts.tokens_current),
    )
    for name, limit, previous, current in rates:
        if not limit:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(limit)
        remaining = max(limit - used(previous, current, elapsed), 0)
        headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
        headers[f"x-ratelimit-reset-{name}"] = duration(reset_s(previous, current, elapsed))
    return headers


def retry_after_s(
    limits: TenantLimits, counts: Counts, elapsed: float, cost: int, fallback: int
) -> int:
    """Whole seconds a refused client should wait before it asks again."""
    if counts.refused == "requests":
        wait = wait_s(
            counts.requests_previous,
            counts.requests_current,
            elapsed,
            1,
            limits.requests_per_minute,
        )
    elif counts.refused == "tokens":
        wait = wait_s(
            counts.tokens_previous,
            counts.tokens_current,
            elapsed,
            cost,
            limits.tokens_per_minute,
        )
    else:
        # a slot frees when a request ends or leaves the queue: no way to tell when
        return fallback
    return max(1, math.ceil(min(wait, 2 * WINDOW_S)))


def refusal_message(
    limits: TenantLimits, counts: Counts, cost: int, queue: str, bound: int, retry_s: int
) -> str:
    reason = counts.refused
    if reason == "requests":
        return f"rate limit reached: {limits.requests_per_minute} requests per minute"
    if reason == "tokens":
        return (
            f"rate limit reached: {limits.tokens_per_minute} tokens per minute "
            f"(this request counts {cost}: its prompt estimate plus max tokens)"
        )
    if reason == "concurrent":
        return f"too many requests at once: at most {limits.concurrent_requests} per tenant"
    if reason == "queued":
        return (
            f"too many queued requests: this tenant's share of the queue is "
            f"{counts.queue_limit} now"
        )
    return f"the {queue} queue is full ({bound} requests); retry after {retry_s}s"
