"""Standard Webhooks signatures, as openai-python's ``client.webhooks.verify_signature``
checks them: ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
under the secret's bytes (``whsec_<base64>``), beside ``webhook-id`` (the event's id, the same
on every attempt) and ``webhook-timestamp`` (the attempt's Unix seconds; receivers refuse
one more than five minutes off)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; ValueError naming the form otherwise."""
    if not secret.startswith(PREFIX):
        raise ValueError("the webhook secret must have the form whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("the webhook secret must have the form whsec_<base64>") from None
    if len(key) < 16:
        raise ValueError("the webhook secret must hold at least 16 bytes (base64 after whsec_)")
    return key


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one attempt."""
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


class Signer:
    """Signs attempts with one secret."""

    def __init__(self, secret: str) -> None:
        self._key = secret_key(secret)

    def headers(self, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers of an attempt made now (or at ``timestamp``)."""
        stamp = int(time.time()) if timestamp is None else timestamp
        return {
            "webhook-id": event_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature(self._key, event_id, stamp, body),
        }
