"""The Files API: upload a batch input file (validated line by line at upload), read it,
list, delete. Batch output and error files are read here too."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from berth.api.deps import State, Tenant
from berth.protocol.batch_input import parse_batch_input
from berth.protocol.errors import InvalidRequest, NotFound
from berth.protocol.response import list_page
from berth.store.files import UPLOAD_PURPOSES

router = APIRouter(prefix="/v1/files")

# multipart framing around the file's bytes: boundaries, headers, the purpose field
_FORM_OVERHEAD = 64 * 1024
# OpenAI's bounds on expires_after[seconds]: one hour to thirty days
_EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)
_FORM_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


def not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"no file {file_id!r}", param=param)


def _too_large(size: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"the file is {size} bytes; at most {limit} are allowed",
        param="file",
        code="file_too_large",
    )


def _expiry(anchor: Any, seconds: Any) -> int | None:
    """The file's TTL from the optional expires_after[anchor] / expires_after[seconds]."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            f"expires_after[anchor] must be 'created_at', got {anchor!r}",
            param="expires_after[anchor]",
        )
    low, high = _EXPIRES_AFTER_S
    if not isinstance(seconds, str) or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise InvalidRequest(
            f"expires_after[seconds] must be between {low} and {high}, got {seconds!r}",
            param="expires_after[seconds]",
        )
    return int(seconds)


@router.post("")
async def upload_file(request: Request, state: State, tenant: Tenant) -> Any:
    limit = state.settings.max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
        raise _too_large(int(declared), limit)  # refuse before reading it
    try:
        form = await request.form(max_files=1, max_fields=len(_FORM_FIELDS))
    except HTTPException as err:
        raise InvalidRequest(f"the upload is not a valid multipart form: {err.detail}") from None
    try:
        for name in form:
            if name not in _FORM_FIELDS:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
        purpose = form.get("purpose")
        if purpose not in UPLOAD_PURPOSES:
            allowed = " or ".join(repr(p) for p in UPLOAD_PURPOSES)
            raise InvalidRequest(
                f"purpose must be {allowed}, got {purpose!r}: berth's files are batch input",
                param="purpose",
            )
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("file is required: send it as a multipart file", param="file")
        ttl = _expiry(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
        content = await upload.read(limit + 1)
        filename = upload.filename or "input.jsonl"
    finally:
        await form.close()
    if len(content) > limit:
        raise _too_large(len(content), limit)
    # validating 50k lines takes seconds: off the event loop, so streams keep flowing
    await asyncio.to_thread(parse_batch_input, content, state.settings.limits())
    # the tenant's file count and bytes: reserved before storing, so uploads in parallel
    # cannot pass the limits together
    size = len(content)
    held = await state.quotas.reserve_file(tenant, size, ttl or state.files.ttl_s)
    try:
        view = await state.files.create(tenant, filename, str(purpose), content, ttl_s=ttl)
    except BaseException:
        await state.quotas.file_dropped(tenant, held)
        raise
    await state.quotas.file_stored(tenant, held, view["id"], size, view["expires_at"])
    return view


@router.get("")
async def list_files(
    tenant: Tenant,
    state: State,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    data, more = await state.files.list_files(
        tenant, after=after, limit=limit, descending=order == "desc", purpose=purpose
    )
    return list_page(data, more)


@router.get("/{file_id}")
async def get_file(file_id: str, tenant: Tenant, state: State) -> dict[str, Any]:
    found = await state.files.get(file_id, tenant)
    if found is None:
        raise not_found(file_id)
    return found


@router.get("/{file_id}/content")
async def file_content(file_id: str, tenant: Tenant, state: State) -> Response:
    content = await state.files.content(file_id, tenant)
    if content is None:
        raise not_found(file_id)
    return Response(content, media_type="application/octet-stream")


@router.delete("/{file_id}")
async def delete_file(file_id: str, tenant: Tenant, state: State) -> dict[str, Any]:
    if not await state.files.delete(file_id, tenant):
        raise not_found(file_id)
    await state.quotas.file_dropped(tenant, file_id)
    return {"id": file_id, "object": "file", "deleted": True}
