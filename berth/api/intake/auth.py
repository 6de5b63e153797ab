"""API keys and tenants: every request is made on behalf of the tenant its key belongs to."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from berth.protocol.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

# the one tenant of an anonymous deployment (--allow-anonymous)
OPEN_TENANT = "local"


def parse_keys(spec: str | None, file: str | None) -> dict[str, str]:
    """``tenant:key`` pairs, comma- or newline-separated, from a setting and/or a file."""
    text = (spec or "") + "\n" + (Path(file).read_text() if file else "")
    keys: dict[str, str] = {}
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, key = item.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError("API keys are given as tenant:key pairs")
        keys[key.strip()] = tenant.strip()
    return keys


class KeyRing:
    """Maps a presented bearer key to its owner in time independent of where (or if) it
    matches. Serves both the API keys (owner: a tenant) and the admin keys."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(k.encode(), t) for k, t in keys.items()]

    @property
    def open(self) -> bool:
        return not self._keys

    def owner(self, authorization: str | None) -> str | None:
        """The owner of the key in an ``Authorization: Bearer <key>`` header, or None."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        candidate = presented.strip().encode()
        found: str | None = None
        for key, owner in self._keys:
            # compare with every key, so timing does not tell which one (or whether) matched
            if hmac.compare_digest(candidate, key):
                found = owner
        return found

    def tenant_or_none(self, authorization: str | None) -> str | None:
        """The tenant of a request's key, or None when the key is missing or unknown."""
        return OPEN_TENANT if self.open else self.owner(authorization)

    def tenant(self, authorization: str | None) -> str:
        if self.open:
            return OPEN_TENANT
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        found = self.owner(authorization)
        if found is None:
            raise Unauthorized("incorrect API key provided")
        return found

    def admit_admin(self, authorization: str | None) -> None:
        """Pass an admin request (this ring holds the admin keys) or raise why not."""
        if self.open:
            # never open, not even on a key-less local stack: registering an adapter names a
            # directory every worker will load
            raise Forbidden("the admin API is disabled: set BERTH_ADMIN_KEYS to enable it")
        if self.owner(authorization) is None:
            raise Unauthorized("an admin key is required: send Authorization: Bearer <admin key>")


def admin_ring(spec: str | None) -> KeyRing:
    """The admin keys (comma-separated) as a ring."""
    return KeyRing({k.strip(): "admin" for k in (spec or "").split(",") if k.strip()})
