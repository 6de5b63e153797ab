"""The Files API: upload a batch input file (streamed: validated and stored line by line as
it arrives), read it, list, delete. Batch output and error files are read here too."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from berth.api.deps import State, Tenant
from berth.api.intake.uploads import off_loop, read_upload
from berth.protocol.batch_input import InputChecker, LineSplitter
from berth.protocol.errors import InvalidRequest, NotFound
from berth.protocol.response import list_page
from berth.store.files import UPLOAD_PURPOSES, new_file_id

router = APIRouter(prefix="/v1/files")

# OpenAI's bounds on expires_after[seconds]: one hour to thirty days
_EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)
_FORM_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


def not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"no file {file_id!r}", param=param)


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
    """Lines are checked and stored as they stream in; the first bad line, or a file over
    its limits, ends the upload with nothing stored."""
    settings = state.settings
    file_id = new_file_id()
    splitter = LineSplitter(settings.max_body_bytes)
    checker = InputChecker(settings.limits(), settings.max_file_lines)

    async def store(lines: list[bytes]) -> None:
        if lines:
            # validating thousands of lines takes a while: off the event loop
            await off_loop(checker.check, lines)
            await state.files.append(file_id, lines)

    async def on_file_data(data: bytes) -> None:
        await store(splitter.feed(data))

    # the tenant's file count and bytes: room is reserved before anything is stored, for
    # the most this upload can hold (its declared length, else the file limit), so uploads
    # in parallel cannot pass the limits together; the stored size replaces it at the end
    declared = request.headers.get("content-length", "")
    bound = settings.max_file_bytes
    if declared.isdigit():
        bound = min(bound, int(declared))
    held = await state.quotas.reserve_file(tenant, bound, state.files.ttl_s)
    try:
        upload = await read_upload(
            request,
            limit=settings.max_file_bytes,
            stall_s=settings.upload_stall_s,
            file_field="file",
            allowed=_FORM_FIELDS,
            on_file_data=on_file_data,
        )
        if upload.filename is None:
            raise InvalidRequest("file is required: send it as a multipart file", param="file")
        purpose = upload.fields.get("purpose")
        if purpose not in UPLOAD_PURPOSES:
            allowed = " or ".join(repr(p) for p in UPLOAD_PURPOSES)
            raise InvalidRequest(
                f"purpose must be {allowed}, got {purpose!r}: berth's files are batch input",
                param="purpose",
            )
        ttl = _expiry(
            upload.fields.get("expires_after[anchor]"), upload.fields.get("expires_after[seconds]")
        )
        last = splitter.end()
        if last:
            await off_loop(checker.check, [last])
        checker.finish()
        view = await state.files.commit(
            file_id,
            tenant,
            upload.filename or "input.jsonl",
            str(purpose),
            upload.file_bytes,
            last=last,
            ttl_s=ttl,
        )
    except BaseException:
        await state.files.discard(file_id)
        await state.quotas.file_dropped(tenant, held)
        raise
    await state.quotas.file_stored(tenant, held, view["id"], view["bytes"], view["expires_at"])
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
async def file_content(file_id: str, tenant: Tenant, state: State) -> StreamingResponse:
    chunks = await state.files.content(file_id, tenant)
    if chunks is None:
        raise not_found(file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.delete("/{file_id}")
async def delete_file(file_id: str, tenant: Tenant, state: State) -> dict[str, Any]:
    if not await state.files.delete(file_id, tenant):
        raise not_found(file_id)
    await state.quotas.file_dropped(tenant, file_id)
    return {"id": file_id, "object": "file", "deleted": True}
