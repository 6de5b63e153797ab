"""Admin-only routes: the model catalog (declare, list, remove models offered whether or not
a worker runs them) and the adapter registry (register, list, remove LoRA adapters by name).

Workers pick registered adapters up within a heartbeat and load them on first use;
requests then name them in ``model`` or ``lora_path``. A declared model is listed by
GET /v1/models and queued while no worker runs it (docs/operations.md, scale to zero).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from berth.api.deps import Admin, State
from berth.protocol.catalog import CatalogModel, check_model_name
from berth.protocol.errors import InvalidRequest, NotFound, invalid_request_from

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
    if not await state.adapters.is_known_model(spec.model) and spec.model not in (
        await state.catalog.names()
    ):
        raise NotFound(
            f"no worker ever served model {spec.model!r}, and the catalog does not declare it",
            param="model",
        )
    record = await state.adapters.register(name, spec.model, str(path))
    return {"name": name, **record}


@router.delete("/adapters/{name}")
async def remove_adapter(name: str, state: State, _: Admin) -> dict[str, Any]:
    if not await state.adapters.remove(name):
        raise NotFound(f"no registered adapter {name!r}", param="name")
    return {"name": name, "deleted": True}


class ModelSpec(BaseModel):
    """A declared model's adapters: names, or {name, path}."""

    model_config = ConfigDict(extra="forbid")

    # checked by CatalogModel, whose messages name the adapter and what is allowed
    adapters: list[Any] = Field(default_factory=list)


def _card(model: CatalogModel) -> dict[str, Any]:
    adapters = [a.model_dump(exclude_none=True) for a in model.adapters]
    return {"name": model.name, "adapters": adapters}


@router.get("/models")
async def list_declared(state: State, _: Admin) -> dict[str, Any]:
    declared = await state.catalog.read()
    return {"object": "list", "data": [_card(declared[name]) for name in sorted(declared)]}


# {name:path}: a Hugging Face id has a '/'
@router.put("/models/{name:path}")
async def declare_model(name: str, spec: ModelSpec, state: State, _: Admin) -> dict[str, Any]:
    try:
        check_model_name(name)
    except ValueError as err:
        raise InvalidRequest(str(err), param="name") from None
    try:
        model = CatalogModel.model_validate({"name": name, "adapters": spec.adapters})
    except ValidationError as err:
        raise invalid_request_from(err) from None
    await state.catalog.put(model)
    return _card(model)


@router.delete("/models/{name:path}")
async def remove_declared(name: str, state: State, _: Admin) -> dict[str, Any]:
    if not await state.catalog.remove(name):
        raise NotFound(f"the catalog declares no model {name!r}", param="name")
    return {"name": name, "deleted": True}
