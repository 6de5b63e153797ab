"""Admin-only routes: the adapter registry (register, list, remove LoRA adapters by name).

Workers pick registered adapters up within a heartbeat and load them on first use;
requests then name them in ``model`` or ``lora_path``.
"""

from __future__ import annotations

import hmac
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from berth.api.routes import State
from berth.protocol import keys
from berth.protocol.errors import BerthError, InvalidRequest, NotFound, Unauthorized

router = APIRouter(prefix="/v1/admin")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Forbidden(BerthError):
    """The caller may not use the admin API."""

    status_code = 403
    error_type = "permission_error"
    default_code = "admin_only"


async def _admin(request: Request, state: State) -> None:
    admin_keys = state.settings.admin_key_list()
    if not admin_keys:
        if state.keys.open:
            return  # an open, local deployment: its operator is the only user
        raise Forbidden("the admin API is disabled: set BERTH_ADMIN_KEYS to enable it")
    scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
    candidate = presented.strip().encode()
    matched = False
    for key in admin_keys:
        matched |= hmac.compare_digest(candidate, key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise Unauthorized("an admin key is required: send Authorization: Bearer <admin key>")


Admin = Annotated[None, Depends(_admin)]


class AdapterSpec(BaseModel):
    """A registered adapter: the base model it applies to and its directory on the workers."""

    model_config = ConfigDict(extra="forbid")

    model: str
    path: str


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"adapter name {name!r} must be 1-128 letters, digits, '.', '_' or '-'",
            param="name",
        )


@router.get("/adapters")
async def list_adapters(state: State, _: Admin) -> dict[str, Any]:
    raw: Any = await state.redis.hgetall(keys.ADAPTERS)
    data = [{"name": name.decode(), **json.loads(value)} for name, value in sorted(raw.items())]
    return {"object": "list", "data": data}


@router.put("/adapters/{name}")
async def register_adapter(name: str, spec: AdapterSpec, state: State, _: Admin) -> dict[str, Any]:
    _check_name(name)
    path = PurePosixPath(spec.path)
    if not path.is_absolute() or ".." in path.parts:
        raise InvalidRequest(
            f"path must be an absolute directory without '..', got {spec.path!r}", param="path"
        )
    if not await state.redis.sismember(keys.MODELS_SET, spec.model):
        raise NotFound(f"no worker ever served model {spec.model!r}", param="model")
    record = {"model": spec.model, "path": str(path)}
    await state.redis.hset(keys.ADAPTERS, name, json.dumps(record))
    return {"name": name, **record}


@router.delete("/adapters/{name}")
async def remove_adapter(name: str, state: State, _: Admin) -> dict[str, Any]:
    if not await state.redis.hdel(keys.ADAPTERS, name):
        raise NotFound(f"no registered adapter {name!r}", param="name")
    return {"name": name, "deleted": True}
