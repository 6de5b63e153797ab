"""Structured logs: one JSON object a line, with the ids bound where the line was logged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from berth.plumbing import logcontext

_PROGRAM = textwrap.dedent(
    """
    import asyncio, logging
    from berth.plumbing import logcontext
    from berth.plumbing.settings import setup_logging
    from berth.workers.settings import WorkerSettings

    setup_logging(WorkerSettings(worker_id="w-9", log_format="{fmt}"), "worker")
    log = logging.getLogger("berth.workers.runtime")

    async def serve(request_id: str) -> None:
        logcontext.bind(request_id=request_id)
        await asyncio.sleep(0)
        log.info("request %s served in %d ms", request_id, 12)

    async def main() -> None:
        await asyncio.gather(serve("chatcmpl-1"), serve("chatcmpl-2"))
        log.info("between requests")
        with logcontext.bound(job_id="job-7", batch_id="batch-3"):
            try:
                raise RuntimeError("engine failed")
            except RuntimeError:
                log.exception("job %s failed", "job-7")
        logging.getLogger("uvicorn.error").debug("not shown at INFO")

    asyncio.run(main())
    """
)


def _run(fmt: str) -> list[str]:
    answer = subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(fmt=fmt)],
        capture_output=True,
        text=True,
        check=True,
    )
    return answer.stderr.splitlines()


def test_json_lines_carry_role_ids_and_a_trace_id_field() -> None:
    lines = [json.loads(line) for line in _run("json") if line.startswith("{")]
    assert len(lines) == 4, lines
    first, second, between, failed = lines
    for line in lines:
        assert set(line) >= {"time", "level", "role", "logger", "message", "trace_id"}
        assert line["role"] == "worker" and line["worker_id"] == "w-9"
        assert line["logger"] == "berth.workers.runtime"
        assert line["trace_id"] is None  # filled in by the traces work
    # each task logs its own id; %-style arguments are formatted
    assert {first["message"], second["message"]} == {
        "request chatcmpl-1 served in 12 ms",
        "request chatcmpl-2 served in 12 ms",
    }
    assert {first["request_id"], second["request_id"]} == {"chatcmpl-1", "chatcmpl-2"}
    assert first["message"].startswith(f"request {first['request_id']} ")
    assert "request_id" not in between and "job_id" not in between
    assert failed["level"] == "ERROR"
    assert (failed["job_id"], failed["batch_id"]) == ("job-7", "batch-3")
    assert "RuntimeError: engine failed" in failed["exc_info"]
    assert failed["time"].endswith("+00:00")


def test_text_lines_stay_as_they_were() -> None:
    lines = _run("text")
    assert any(" worker INFO berth.workers.runtime: between requests" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


async def test_bindings_do_not_leak_between_tasks() -> None:
    async def bound_then_read(job_id: str) -> dict[str, str]:
        logcontext.bind(job_id=job_id)
        await asyncio.sleep(0)
        return dict(logcontext.current())

    seen = await asyncio.gather(bound_then_read("a"), bound_then_read("b"))
    assert seen == [{"job_id": "a"}, {"job_id": "b"}]
    assert "job_id" not in logcontext.current()


def test_only_known_ids_bind() -> None:
    with pytest.raises(ValueError, match="tenant.*request_id"):
        logcontext.bind(tenant="x")
