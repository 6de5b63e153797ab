"""GET /v1/models: the base models and adapters live workers serve."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from berth.api.deps import State, Tenant

router = APIRouter()


@router.get("/v1/models")
async def list_models(state: State, tenant: Tenant) -> dict[str, Any]:
    return {"object": "list", "data": state.directory.model_cards()}
