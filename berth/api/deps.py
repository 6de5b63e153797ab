"""Typed route dependencies: ``State`` (the process's clients and stores), ``Tenant`` (who the
API key belongs to, once the request is counted against the tenant's requests per minute)
and ``Admin`` (an admin key was presented)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from berth.api.state import ApiState

# async, all of them: FastAPI runs sync dependencies in its thread pool, once per request


async def _state(request: Request) -> ApiState:
    return request.app.state.berth  # type: ignore[no-any-return]


State = Annotated[ApiState, Depends(_state)]


async def _tenant(request: Request, state: State) -> str:
    tenant = state.keys.tenant(request.headers.get("authorization"))
    # every tenant request counts, before its route reads the body. Once Redis refused the
    # tenant, the RefuseOverRate middleware answers its next requests before routing (and
    # count_request would, without Redis, if one got here): one script call a second at most.
    # While Redis is known away nothing can count: the route answers from what this process
    # holds (the model list) or with its 503, not after the client's retries run out
    if state.directory.redis_ok:
        await state.quotas.count_request(tenant)
    return tenant


# the tenant of a request, counted against its requests per minute (every tenant route)
Tenant = Annotated[str, Depends(_tenant)]


async def _admin(request: Request, state: State) -> None:
    state.admin_keys.admit_admin(request.headers.get("authorization"))


Admin = Annotated[None, Depends(_admin)]
