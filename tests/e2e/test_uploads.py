"""Streamed uploads through a real API process: the size limit holds while the body is read
(chunked bodies too, which declare no length) with 413, a bad line is a 400 naming it, the
line limit holds, and a refused upload leaves nothing in Redis."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.stack import RunningStack, StackFactory

pytestmark = pytest.mark.e2e

KEY = "key-a"
MAX_BYTES = 64 * 1024
MAX_LINES = 20
BOUNDARY = "berthboundary"
STALL_S = 1.0


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    running = make_stack(
        "api",
        env={
            "BERTH_API_KEYS": f"a:{KEY}",
            "BERTH_MAX_FILE_BYTES": str(MAX_BYTES),
            "BERTH_MAX_FILE_LINES": str(MAX_LINES),
            "BERTH_UPLOAD_STALL_S": str(STALL_S),
        },
        ready=False,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{running.url}/health").status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not start")


def _line(i: int) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
    item = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(item).encode() + b"\n"


def _form(content: Iterator[bytes]) -> Iterator[bytes]:
    """A multipart body streamed piece by piece: sent chunked, with no Content-Length."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        'filename="in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    yield from content
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _upload(stack: RunningStack, content: Iterator[bytes]) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/files",
        content=_form(content),
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
        timeout=30,
    )


def _file_keys(stack: RunningStack) -> list[bytes]:
    with redis.Redis.from_url(stack.redis_url) as client:
        return list(client.scan_iter("berth:file:*"))


def test_a_chunked_upload_streams_in_and_reads_back(stack: RunningStack) -> None:
    lines = [_line(i) for i in range(MAX_LINES)]
    answer = _upload(stack, iter(lines))
    assert answer.status_code == 200, answer.text
    file = answer.json()
    assert file["bytes"] == sum(len(x) for x in lines) and file["purpose"] == "batch"
    content = httpx.get(
        f"{stack.url}/v1/files/{file['id']}/content", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert content.content == b"".join(lines)
    # a batch counts the file's lines as the upload did (the final newline ends the last)
    batch = httpx.post(
        f"{stack.url}/v1/batches",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "input_file_id": file["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert batch.status_code in (400, 404) and batch.json()["error"]["param"] == "line 1"


def test_an_oversized_chunked_upload_is_413_while_it_streams(stack: RunningStack) -> None:
    before = _file_keys(stack)

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):
            yield b" " * 8192 + b"\n"  # blank lines: only the size limit applies

    answer = _upload(stack, endless())
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert str(MAX_BYTES) in error["message"]
    assert _file_keys(stack) == before


def test_an_oversized_declared_upload_is_413_before_reading(stack: RunningStack) -> None:
    answer = httpx.post(
        f"{stack.url}/v1/files",
        headers={"Authorization": f"Bearer {KEY}"},
        files={"file": ("in.jsonl", b"x" * (MAX_BYTES * 3))},
        data={"purpose": "batch"},
    )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"


def test_a_bad_line_is_400_naming_its_number(stack: RunningStack) -> None:
    before = _file_keys(stack)
    answer = _upload(stack, iter([_line(0), _line(1), b"{not json\n", _line(3)]))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "line 3"
    assert error["message"].startswith("line 3: the line is not valid JSON")
    assert _file_keys(stack) == before


def test_a_line_with_no_end_is_400_when_it_outgrows_a_request(stack: RunningStack) -> None:
    # one "line" larger than a request may be: refused as it grows, whatever the file limit
    answer = _upload(stack, iter([_line(0), b"x" * (MAX_BYTES - 100)]))
    assert answer.status_code in (400, 413)


def test_too_many_lines_is_400(stack: RunningStack) -> None:
    answer = _upload(stack, iter([_line(i) for i in range(MAX_LINES + 1)]))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "too_many_lines" and str(MAX_LINES) in error["message"]


@pytest.mark.parametrize("drip", [False, True])
def test_a_stalled_or_dripping_upload_is_408(stack: RunningStack, drip: bool) -> None:
    """A slow upload (slowloris) is ended, not held open: nothing for the stall time, or
    a byte at a time, far under the minimum rate."""
    before = _file_keys(stack)
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Content-Length: 60000\r\n\r\n"
        )
        sock.sendall(head.encode() + next(_form(iter([]))) + _line(0))
        sock.settimeout(0.2)
        answer = b""
        deadline = time.monotonic() + 10 * STALL_S
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            if drip:
                sock.sendall(b" ")
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert _file_keys(stack) == before
