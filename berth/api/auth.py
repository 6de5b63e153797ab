"""API keys and tenants: every request is made on behalf of the tenant its key belongs to."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from berth.protocol.errors import Unauthorized

log = logging.getLogger(__name__)

# the one tenant of an open (key-less) deployment
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
    """Maps a presented key to its tenant in time independent of where (or if) it matches."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(k.encode(), t) for k, t in keys.items()]
        if not self._keys:
            log.warning("no API keys configured: berth is open to anyone who can reach it")

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, authorization: str | None) -> str:
        if self.open:
            return OPEN_TENANT
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        candidate = presented.strip().encode()
        found: str | None = None
        for key, tenant in self._keys:
            # compare with every key, so timing does not tell which one (or whether) matched
            if hmac.compare_digest(candidate, key):
                found = tenant
        if found is None:
            raise Unauthorized("incorrect API key provided")
        return found


async def _tenant(request: Request) -> str:
    ring: KeyRing = request.app.state.berth.keys
    return ring.tenant(request.headers.get("authorization"))


Tenant = Annotated[str, Depends(_tenant)]
