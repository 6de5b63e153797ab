"""The Batch API: a batch runs every line of an uploaded file as a job in the batch lane
(lowest priority, never more than the workers' batch share), and is finalised into output
and error files by the schedulers (``berth/scheduler/batches.py``)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from berth.api.deps import State, Tenant
from berth.api.intake.admission import read_json, webhook_for
from berth.api.intake.uploads import off_loop
from berth.api.state import ApiState
from berth.plumbing import logcontext
from berth.protocol.batch_input import BATCH_URL, InputChecker, at_line
from berth.protocol.errors import (
    InvalidRequest,
    NotFound,
    field_error,
    invalid_request_from,
)
from berth.protocol.response import list_page
from berth.store.batches import CHUNK

router = APIRouter(prefix="/v1/batches")

# completion windows berth accepts, as OpenAI does: only 24 hours
WINDOWS = {"24h": 24 * 3600}
_METADATA_BOUNDS = (16, 64, 512)  # keys, characters per key, characters per value
# cancelling a batch already cancelling or cancelled answers with it, as if it were new
_CANCELLABLE = ("validating", "in_progress", "cancelling", "cancelled")


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int

    @field_validator("seconds")
    @classmethod
    def _seconds(cls, value: int) -> int:
        if not 3600 <= value <= 30 * 24 * 3600:
            raise field_error(f"must be between 3600 and 2592000, got {value}")
        return value


class CreateBatch(BaseModel):
    """The body of POST /v1/batches."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = None
    # berth's own: where the batch's end event goes (checked in create_batch)
    webhook: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value != BATCH_URL:
            raise field_error(f"must be {BATCH_URL!r}, got {value!r}: berth batches chat")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value not in WINDOWS:
            raise field_error(f"must be one of {sorted(WINDOWS)}, got {value!r}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        most, key_chars, value_chars = _METADATA_BOUNDS
        if value is not None:
            if len(value) > most:
                raise field_error(f"may have at most {most} keys, got {len(value)}")
            for k, v in value.items():
                if len(k) > key_chars or len(v) > value_chars:
                    raise field_error(
                        f"keys are at most {key_chars} characters and values at most "
                        f"{value_chars}; {k[:70]!r} breaks that"
                    )
        return value


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"no batch {batch_id!r}", param="batch_id")


def _resolve(
    state: ApiState,
    checker: InputChecker,
    lines: list[bytes],
    resolved: dict[tuple[str, str | None], tuple[str, str | None]],
) -> None:
    """Check ``lines`` and resolve the models they name into ``resolved``; the first line
    that is invalid or names a model no worker serves fails the batch with 400 naming it."""
    for number, chat in checker.check(lines):
        key = (chat.model, chat.lora_path)
        if key not in resolved:
            try:
                # a declared model's lines wait for its worker, within the batch's window
                resolved[key] = state.directory.resolve(chat.model, chat.lora_path, True)
            except (InvalidRequest, NotFound) as err:
                raise at_line(number, err) from None


@router.post("")
async def create_batch(request: Request, state: State, tenant: Tenant) -> dict[str, Any]:
    try:
        spec = CreateBatch.model_validate(await read_json(request, state.settings.max_body_bytes))
    except ValidationError as err:
        raise invalid_request_from(err) from None
    found = await state.files.get(spec.input_file_id, tenant)
    if found is None:
        raise NotFound(f"no file {spec.input_file_id!r}", param="input_file_id")
    if found["purpose"] != "batch":
        raise InvalidRequest(
            f"input_file_id must name a file uploaded with purpose 'batch'; "
            f"{spec.input_file_id!r} has purpose {found['purpose']!r}",
            param="input_file_id",
        )
    webhook = await webhook_for(state, tenant, spec.webhook)
    await state.quotas.check_open_batches(tenant, state.batches)
    created_at = time.time()
    expires_at = created_at + WINDOWS[spec.completion_window]
    limits = state.settings.limits()
    checker = InputChecker(limits, state.settings.max_file_lines)
    resolved: dict[tuple[str, str | None], tuple[str, str | None]] = {}
    # the file is read a slice at a time, and checked off the event loop
    count = await state.files.line_count(spec.input_file_id)
    async for first, lines in state.files.iter_lines(spec.input_file_id, CHUNK):
        if first + len(lines) == count and not lines[-1]:
            lines = lines[:-1]  # what follows the final newline: no line at all
        await off_loop(_resolve, state, checker, lines, resolved)
    checker.finish()
    state.quotas.check_batch_lines(tenant, checker.requests)
    return await state.batches.create(
        tenant,
        input_file_id=spec.input_file_id,
        total=checker.requests,
        resolved=resolved,
        limits=limits,
        window=state.settings.batch_window,
        endpoint=spec.endpoint,
        completion_window=spec.completion_window,
        created_at=created_at,
        expires_at=expires_at,
        metadata=spec.metadata,
        output_ttl_s=spec.output_expires_after.seconds if spec.output_expires_after else None,
        webhook=webhook,
    )


@router.get("")
async def list_batches(
    tenant: Tenant,
    state: State,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    data, more = await state.batches.list_batches(tenant, after=after, limit=limit)
    return list_page(data, more)


@router.get("/{batch_id}")
async def get_batch(batch_id: str, tenant: Tenant, state: State) -> dict[str, Any]:
    batch = await state.batches.get(batch_id, tenant)
    if batch is None:
        raise _not_found(batch_id)
    return batch


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, tenant: Tenant, state: State) -> dict[str, Any]:
    logcontext.bind(batch_id=batch_id)
    if await state.batches.get(batch_id, tenant) is None:
        raise _not_found(batch_id)
    before = await state.batches.cancel(batch_id)
    if before not in _CANCELLABLE:
        raise InvalidRequest(
            f"batch {batch_id!r} is {before}: only a validating or in-progress batch "
            "can be cancelled",
            param="batch_id",
            code="batch_not_cancellable",
        )
    batch = await state.batches.get(batch_id, tenant)
    if batch is None:
        raise _not_found(batch_id)
    return batch
