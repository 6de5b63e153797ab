"""Admin-only routes: the adapter registry (register, list, remove LoRA adapters by name).

Workers pick registered adapters up within a heartbeat and load them on first use;
requests then name them in ``model`` or ``lora_path``.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from berth.api.deps import Admin, State
from berth.protocol.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/v1/admin")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
    records = await state.adapters.records()
    data = [{"name": name, **record} for name, record in sorted(records.items())]
    return {"object": "list", "data": data}


@router.put("/adapters/{name}")
async def register_adapter(name: str, spec: AdapterSpec, state: State, _: Admin) -> dict[str, Any]:
    _check_name(name)
    path = PurePosixPath(spec.path)
    if not path.is_absolute() or ".." in path.parts:
        raise InvalidRequest(
            f"path must be an absolute directory without '..', got {spec.path!r}", param="path"
        )
    if not await state.adapters.is_known_model(spec.model):
        raise NotFound(f"no worker ever served model {spec.model!r}", param="model")
    record = await state.adapters.register(name, spec.model, str(path))
    return {"name": name, **record}


@router.delete("/adapters/{name}")
async def remove_adapter(name: str, state: State, _: Admin) -> dict[str, Any]:
    if not await state.adapters.remove(name):
        raise NotFound(f"no registered adapter {name!r}", param="name")
    return {"name": name, "deleted": True}
