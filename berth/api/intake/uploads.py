"""Streaming multipart uploads: the body is parsed as it arrives (chunked or not), counted
against its limit as it is read, and the file part's bytes are handed on chunk by chunk,
so the API never holds (nor spools) a whole file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import python_multipart.multipart as multipart
from fastapi import Request
from python_multipart.exceptions import MultipartParseError

from berth.protocol.errors import InvalidRequest, TooLarge, TooSlow

# multipart framing around the file's bytes: boundaries, part headers, the small fields
FORM_OVERHEAD = 64 * 1024
# a form field other than the file (purpose, expires_after[...]) is short
_MAX_FIELD_BYTES = 1024
# the slowest an upload may average once its stall time has passed (a 200 MB file at this
# rate takes 14 hours): a drip-fed body holds a connection and a partial file no longer
MIN_BYTES_PER_S = 4096


P = ParamSpec("P")
R = TypeVar("R")

# one thread checks uploaded and batched lines for the whole process: checks queue behind
# each other, not beside the event loop (every busy thread is one more holder of the GIL
# the loop waits for between its steps)
_CHECKS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="line-checks")


async def off_loop(check: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``check(*args)`` on the line-checking thread."""
    return await asyncio.get_running_loop().run_in_executor(_CHECKS, lambda: check(*args, **kwargs))


def too_slow(received: int, elapsed: float) -> TooSlow:
    return TooSlow(
        f"the upload sent {received} bytes in {elapsed:.0f} s; send at least "
        f"{MIN_BYTES_PER_S} bytes a second, without pausing",
        param="file",
    )


def too_large(size: int, limit: int) -> TooLarge:
    return TooLarge(
        f"the file is over {limit} bytes (at least {size} were sent); at most {limit} are allowed",
        param="file",
        code="file_too_large",
    )


@dataclass
class Upload:
    """What a form carried besides the file's bytes."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Form:
    """python-multipart's callbacks, collecting what each parsed chunk held; the async side
    then hands the file's bytes on (a callback cannot await)."""

    def __init__(self, file_field: str, allowed: tuple[str, ...]) -> None:
        self.file_field = file_field
        self.allowed = allowed
        self.upload = Upload()
        self.file_data: list[bytes] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._files = 0

    def callbacks(self) -> multipart.MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, options = multipart.parse_options_header(self._header_value)
            name = options.get(b"name", b"").decode("utf-8", "replace")
            if name not in self.allowed:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
            self._part.name = name
            if b"filename" in options:
                self._part.filename = options[b"filename"].decode("utf-8", "replace")
            if name == self.file_field:
                self._files += 1
                if self._files > 1:
                    raise InvalidRequest("send one file per upload", param=name)
                self.upload.filename = self._part.filename or ""
        self._header_name = b""
        self._header_value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part.name == self.file_field:
            self.file_data.append(data[start:end])
            self.upload.file_bytes += end - start
            return
        self._part.data += data[start:end]
        if len(self._part.data) > _MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"{self._part.name} is over {_MAX_FIELD_BYTES} bytes", param=self._part.name
            )

    def _end(self) -> None:
        if self._part.name and self._part.name != self.file_field:
            self.upload.fields[self._part.name] = self._part.data.decode("utf-8", "replace")


async def read_upload(
    request: Request,
    *,
    limit: int,
    stall_s: float,
    file_field: str,
    allowed: tuple[str, ...],
    on_file_data: Callable[[bytes], Awaitable[None]],
) -> Upload:
    """Parse a multipart/form-data body as it streams in, calling ``on_file_data`` with each
    piece of the file part; 413 as soon as the file (or the body) outgrows ``limit``; 408
    when nothing arrives for ``stall_s``, or the body averages under MIN_BYTES_PER_S after
    that long."""
    content_type, options = multipart.parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "the upload must be a multipart/form-data body with a file and its purpose",
            param="file",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(int(declared), limit)  # refuse before reading it
    form = _Form(file_field, allowed)
    parser = multipart.MultipartParser(boundary, form.callbacks())
    received = 0
    started = time.monotonic()
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), stall_s)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise too_slow(received, time.monotonic() - started) from None
        received += len(chunk)
        elapsed = time.monotonic() - started
        if elapsed > stall_s and received < MIN_BYTES_PER_S * elapsed:
            raise too_slow(received, elapsed)
        if received > limit + FORM_OVERHEAD:
            raise too_large(received, limit)
        try:
            parser.write(chunk)
        except MultipartParseError as err:
            raise InvalidRequest(f"the upload is not a valid multipart form: {err}") from None
        if form.upload.file_bytes > limit:
            raise too_large(form.upload.file_bytes, limit)
        pieces, form.file_data = form.file_data, []
        for piece in pieces:
            await on_file_data(piece)
    try:
        parser.finalize()
    except MultipartParseError as err:
        raise InvalidRequest(f"the upload is not a valid multipart form: {err}") from None
    return form.upload
