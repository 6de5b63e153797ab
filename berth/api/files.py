"""The Files API: upload a batch input file (validated line by line at upload), read it,
list, delete. Batch output and error files are read here too."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from berth.api.auth import Tenant
from berth.api.routes import State
from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.errors import BerthError, InvalidRequest, NotFound
from berth.protocol.limits import RequestLimits
from berth.protocol.response import list_page
from berth.store.files import UPLOAD_PURPOSES, FileStore

router = APIRouter(prefix="/v1/files")

BATCH_URL = "/v1/chat/completions"
_LINE_FIELDS = ("custom_id", "method", "url", "body")
# multipart framing around the file's bytes: boundaries, headers, the purpose field
_FORM_OVERHEAD = 64 * 1024
# OpenAI's bounds on expires_after[seconds]: one hour to thirty days
_EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)
_FORM_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


def _files(request: Request) -> FileStore:
    state = request.app.state.berth
    return FileStore(state.redis, state.settings.job_ttl_s)


Files = Annotated[FileStore, Depends(_files)]


def not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"no file {file_id!r}", param=param)


# -- batch input ----------------------------------------------------------------------------


def at_line(number: int, err: BerthError) -> InvalidRequest:
    """An error in one line of a batch file, naming the line."""
    return InvalidRequest(f"line {number}: {err.message}", param=f"line {number}", code=err.code)


def parse_batch_input(
    content: bytes, limits: RequestLimits
) -> list[tuple[int, str, ChatCompletionRequest]]:
    """(line number, custom_id, request) of every line of a batch input file; the first bad
    line raises InvalidRequest naming it. Blank lines are skipped (and still counted)."""
    out = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            custom_id, chat = _parse_line(raw, limits, seen)
        except InvalidRequest as err:
            raise at_line(number, err) from None
        out.append((number, custom_id, chat))
    if not out:
        raise InvalidRequest(
            "the file holds no requests; a batch file has one JSON request per line",
            param="file",
        )
    return out


def _parse_line(
    raw: bytes, limits: RequestLimits, seen: set[str]
) -> tuple[str, ChatCompletionRequest]:
    if len(raw) > limits.max_body_bytes:
        raise InvalidRequest(
            f"the line is {len(raw)} bytes; at most {limits.max_body_bytes} are allowed",
            code="request_too_large",
        )
    try:
        item = json.loads(raw)
    except ValueError as err:
        raise InvalidRequest(f"not valid JSON: {err}") from None
    if not isinstance(item, dict):
        raise InvalidRequest("must be a JSON object with custom_id, method, url and body")
    for name in item:
        if name not in _LINE_FIELDS:
            raise InvalidRequest(
                f"unknown field {name!r}; a line has custom_id, method, url and body"
            )
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidRequest(f"custom_id must be a non-empty string, got {custom_id!r}")
    if custom_id in seen:
        raise InvalidRequest(f"custom_id {custom_id!r} is used by an earlier line")
    seen.add(custom_id)
    if item.get("method") != "POST":
        raise InvalidRequest(f"method must be 'POST', got {item.get('method')!r}")
    if item.get("url") != BATCH_URL:
        raise InvalidRequest(f"url must be {BATCH_URL!r}, got {item.get('url')!r}")
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a chat-completion request object")
    chat = parse_chat_request(body, limits)
    if chat.stream:
        raise InvalidRequest("stream must be false: a batch collects results, it does not stream")
    return custom_id, chat


# -- routes ---------------------------------------------------------------------------------


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
async def upload_file(request: Request, state: State, tenant: Tenant, files: Files) -> Any:
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
    return await files.create(tenant, filename, str(purpose), content, ttl_s=ttl)


@router.get("")
async def list_files(
    tenant: Tenant,
    files: Files,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    data, more = await files.list_files(
        tenant, after=after, limit=limit, descending=order == "desc", purpose=purpose
    )
    return list_page(data, more)


@router.get("/{file_id}")
async def get_file(file_id: str, tenant: Tenant, files: Files) -> dict[str, Any]:
    found = await files.get(file_id, tenant)
    if found is None:
        raise not_found(file_id)
    return found


@router.get("/{file_id}/content")
async def file_content(file_id: str, tenant: Tenant, files: Files) -> Response:
    content = await files.content(file_id, tenant)
    if content is None:
        raise not_found(file_id)
    return Response(content, media_type="application/octet-stream")


@router.delete("/{file_id}")
async def delete_file(file_id: str, tenant: Tenant, files: Files) -> dict[str, Any]:
    if not await files.delete(file_id, tenant):
        raise not_found(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
