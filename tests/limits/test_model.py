"""The per-tenant limit policy (berth/limits/model.py), without Redis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from berth.limits import Counts, LimitBook, TenantLimits
from berth.limits import model as quota


def test_fair_share_divides_the_queue_but_keeps_a_floor() -> None:
    assert quota.fair_share(2048, 1, 8) == 2048
    assert quota.fair_share(2048, 2, 8) == 1024
    assert quota.fair_share(2048, 1000, 8) == 8
    # the floor never exceeds the queue itself
    assert quota.fair_share(2, 1, 8) == 2


def test_sliding_window_weights_the_previous_minute() -> None:
    assert quota.used(100, 10, 0.0) == 110
    assert quota.used(100, 10, 0.5) == 60
    assert quota.used(100, 10, 1.0) == 10


def _fits_after(
    previous: int, current: int, elapsed: float, cost: int, limit: int, s: float
) -> bool:
    """Whether the script would admit ``cost`` more ``s`` seconds from now, nothing counted
    meanwhile (past the minute, the current window becomes the previous one)."""
    at = elapsed + s / quota.WINDOW_S
    if at < 1:
        return quota.used(previous, current, at) + cost <= limit
    if at < 2:
        return quota.used(current, 0, at - 1) + cost <= limit
    return cost <= limit


def test_wait_until_a_request_fits() -> None:
    # fits now
    assert quota.wait_s(0, 5, 0.5, 1, 10) == 0
    # the previous window fades: floor(10 * (1 - t)) <= 9 as soon as any time passes
    assert quota.wait_s(10, 0, 0.0, 1, 10) == pytest.approx(0)
    # ... and floor(20 * (1 - t)) <= 9 once t > 0.5
    assert quota.wait_s(20, 0, 0.0, 1, 10) == pytest.approx(0.5 * 60)
    # the current window is full: only next minute, as it fades, is there room
    assert quota.wait_s(0, 10, 0.5, 1, 10) == pytest.approx(0.5 * 60)
    assert quota.wait_s(0, 20, 0.5, 1, 10) == pytest.approx((0.5 + 0.5) * 60)
    # never fits
    assert quota.wait_s(0, 0, 0.0, 11, 10) == math.inf


def test_wait_near_the_minutes_end_counts_the_rounding_down() -> None:
    # 10 requests this minute, 0.6 s before its end: the next minute's faded count,
    # floor(10 * (1 - t)), is 9 at once, so the 11th fits 0.6 s from now (not 6.6 s,
    # as when the rounding was ignored, which made a 7 s Retry-After)
    wait = quota.wait_s(0, 10, 0.99, 1, 10)
    assert wait == pytest.approx(0.6)
    assert not _fits_after(0, 10, 0.99, 1, 10, wait - 0.01)
    assert _fits_after(0, 10, 0.99, 1, 10, wait + 0.01)
    limits = TenantLimits(requests_per_minute=10)
    counts = Counts(allowed=False, refused="requests", requests_current=10)
    assert quota.retry_after_s(limits, counts, 0.99, 1, 1) == 1


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "cost", "limit"),
    [
        (10, 0, 0.0, 1, 10),
        (37, 3, 0.2, 1, 30),
        (600, 300, 0.5, 1, 600),
        (0, 600, 0.999, 1, 600),
        (0, 9, 0.3, 2, 10),
        (500, 450, 0.7, 1, 600),
        (7, 12, 0.1, 3, 12),
        (1000, 20, 0.05, 1, 600),
    ],
)
def test_wait_is_the_moment_the_script_admits(
    previous: int, current: int, elapsed: float, cost: int, limit: int
) -> None:
    assert not _fits_after(previous, current, elapsed, cost, limit, 0)
    wait = quota.wait_s(previous, current, elapsed, cost, limit)
    assert not _fits_after(previous, current, elapsed, cost, limit, max(wait - 0.01, 0))
    assert _fits_after(previous, current, elapsed, cost, limit, wait + 0.01)


def test_durations_read_as_openai_writes_them() -> None:
    assert quota.duration(0.02) == "20ms"
    assert quota.duration(1) == "1s"
    assert quota.duration(360) == "6m0s"
    assert quota.duration(61.2) == "1m2s"


def test_rate_headers_and_retry_after() -> None:
    limits = TenantLimits(requests_per_minute=10, tokens_per_minute=1000)
    counts = Counts(allowed=False, refused="requests", requests_current=10, tokens_current=400)
    headers = quota.rate_headers(limits, counts, 0.5)
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "1m30s",
    }
    assert quota.retry_after_s(limits, counts, 0.5, 5, 1) == 30
    # unlimited rates send no headers
    assert (
        quota.rate_headers(TenantLimits(requests_per_minute=0, tokens_per_minute=0), counts, 0)
        == {}
    )
    # concurrency and queue refusals: no way to know, the configured fallback
    assert quota.retry_after_s(limits, Counts(allowed=False, refused="concurrent"), 0.5, 5, 3) == 3


def test_request_cost_counts_prompt_and_completion() -> None:
    request = {"messages": [{"role": "user", "content": "x" * 400}], "max_completion_tokens": 10}
    chars = quota.prompt_chars(request)
    assert chars == 400
    assert quota.request_cost(chars, 10, 2, 1024) == 100 + 20
    assert quota.request_cost(chars, None, 1, 1024) == 100 + 1024
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert quota.prompt_chars(parts) == len(json.dumps([{"type": "text", "text": "hi"}]))


def test_overrides_apply_per_tenant_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"big": {"requests_per_minute": 9000}}))
    overrides = quota.read_overrides('{"big": {"files": 5}, "small": {"files": 1}}', str(path))
    book = LimitBook(TenantLimits(requests_per_minute=60), overrides)
    assert book.of("big").requests_per_minute == 9000
    assert book.of("big").files == 5
    assert book.of("small").requests_per_minute == 60
    assert book.of("anyone") == TenantLimits(requests_per_minute=60)


def test_overrides_with_unknown_limits_or_bad_shape_are_refused() -> None:
    with pytest.raises(ValidationError):
        quota.read_overrides('{"a": {"requests_per_hour": 5}}', None)
    with pytest.raises(ValidationError):
        quota.read_overrides('{"a": {"files": -1}}', None)
    with pytest.raises(ValueError, match="tenant -> "):
        quota.read_overrides('{"a": 5}', None)


def test_counts_move_on_with_the_minute() -> None:
    counts = Counts(
        allowed=False,
        refused="requests",
        requests_previous=4,
        requests_current=10,
        tokens_previous=100,
        tokens_current=400,
    )
    assert quota.moved_on(counts, 0) == counts
    later = quota.moved_on(counts, 1)
    assert (later.requests_previous, later.requests_current) == (10, 0)
    assert (later.tokens_previous, later.tokens_current) == (400, 0)
    assert later.refused == "requests"
    gone = quota.moved_on(counts, 2)
    assert (gone.requests_previous, gone.requests_current, gone.tokens_current) == (0, 0, 0)
    # just past the minute's turn, a full minute's count has faded enough for one more
    # request (as the admission script computes it): a remembered refusal must not stand
    turned = quota.moved_on(Counts(allowed=False, refused="requests", requests_current=10), 1)
    assert quota.used(turned.requests_previous, turned.requests_current, 0.01) + 1 <= 10
