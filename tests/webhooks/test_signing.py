"""berth's signatures pass openai-python's own verifier (``client.webhooks.unwrap``), and a
changed body, id, timestamp or secret fails it."""

from __future__ import annotations

import base64
import time

import pytest
from openai import InvalidWebhookSignatureError, OpenAI

from berth.store.webhooks import Delivery
from berth.webhooks.events import event_body, retry_delay
from berth.webhooks.signing import Signer, secret_key

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


def _delivery(kind: str = "job.completed") -> Delivery:
    return Delivery(id="evt_1", type=kind, created_at=1_700_000_000, object="job_1", url="x")


def _client(secret: str = SECRET) -> OpenAI:
    return OpenAI(api_key="unused", webhook_secret=secret)


@pytest.mark.parametrize(
    "kind", ["job.completed", "job.failed", "batch.completed", "batch.expired"]
)
def test_openai_unwraps_a_signed_event(kind: str) -> None:
    body = event_body(_delivery(kind))
    headers = Signer(SECRET).headers("evt_1", body)
    event = _client().webhooks.unwrap(body, headers)
    assert (event.id, event.type, event.object) == ("evt_1", kind, "event")
    # job.* types are berth's own: openai parses them into one of its event classes, whose
    # data reads the same
    assert event.model_dump()["data"] == {"id": "job_1"}
    assert event.created_at == 1_700_000_000


def test_a_str_payload_verifies_too() -> None:
    body = event_body(_delivery())
    _client().webhooks.verify_signature(body.decode(), Signer(SECRET).headers("evt_1", body))


@pytest.mark.parametrize(
    "change",
    ["body", "id", "timestamp", "secret", "stale"],
)
def test_anything_changed_fails_verification(change: str) -> None:
    body = event_body(_delivery())
    stamp = int(time.time()) - (600 if change == "stale" else 0)
    headers = Signer(OTHER if change == "secret" else SECRET).headers("evt_1", body, stamp)
    if change == "body":
        body = body.replace(b"job_1", b"job_2")
    if change == "id":
        headers["webhook-id"] = "evt_2"
    if change == "timestamp":
        headers["webhook-timestamp"] = str(stamp + 1)
    with pytest.raises(InvalidWebhookSignatureError):
        _client().webhooks.verify_signature(body, headers)


def test_created_at_is_whole_seconds_as_openai_has_it() -> None:
    ended = Delivery(id="e", type="job.failed", created_at=1_700_000_000.7, object="j", url="x")
    assert b'"created_at":1700000000,' in event_body(ended)


def test_the_body_is_the_same_on_every_attempt() -> None:
    assert event_body(_delivery()) == event_body(_delivery())
    signer = Signer(SECRET)
    body = event_body(_delivery())
    assert signer.headers("evt_1", body, 5)["webhook-id"] == "evt_1"


@pytest.mark.parametrize("bad", ["s" * 32, "whsec_not base64!", "whsec_" + "c2hvcnQ="])
def test_a_secret_not_in_the_whsec_form_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        secret_key(bad)


def test_retries_wait_as_long_as_the_event_is_old() -> None:
    waits = [retry_delay(age, 5, 1800, jitter=0) for age in (0, 5, 10, 20, 40, 5000)]
    assert waits == [5, 5, 10, 20, 40, 1800]
    drawn = [retry_delay(100, 5, 1800) for _ in range(200)]
    assert min(drawn) >= 90 and max(drawn) <= 110 and len(set(drawn)) > 1
