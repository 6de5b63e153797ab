"""Finalising batches. Once a second each scheduler replica looks at every active batch:
it counts the batch's ended jobs (request_counts), ends the jobs of a batch being cancelled
or past its completion window, and once every job has ended writes the output and error
files in input order and records the outcome.

Any number of replicas may run this at once: progress is recorded compare-and-set and the
finalisation is taken by one replica (``claim_batch.lua``), so a batch is finalised once.
The cost per call is bounded: a scan resumes where the last one stopped, so a job is read
about once while it runs and once more when the files are written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import LockError

from berth.protocol.batch_input import custom_id_of
from berth.protocol.errors import (
    InvalidRequest,
    NotFound,
    QueueFull,
    Timeout,
    Unauthorized,
    Unavailable,
)
from berth.store.batches import (
    CHUNK,
    LIVE_FIELDS,
    TERMINAL_BATCH_STATUSES,
    BatchStore,
    Scan,
    active_batches,
    forget_active,
    load_record,
)
from berth.store.files import OUTPUT_PURPOSE, FileStore
from berth.store.jobs import new_job_id

log = logging.getLogger(__name__)

# a batch still validating this long after it was created lost the API process creating it
STALE_CREATION_S = 600.0
# a finaliser that took a batch and did not commit within this long is presumed dead
STALE_CLAIM_S = 300.0
# jobs one call reads per batch, so a huge batch cannot stall the scheduler's loop
SCAN_BUDGET = 20 * CHUNK

# a failed request's HTTP status from its error body's type (not-found is told by its code)
_HTTP_STATUS = {
    cls.error_type: cls.status_code
    for cls in (InvalidRequest, Unauthorized, QueueFull, Unavailable, Timeout)
}
_ENDED: dict[str | None, tuple[str, str]] = {
    "expired": ("batch_expired", "the request could not run before the batch expired"),
    "cancelled": ("batch_cancelled", "the request was cancelled before it ran"),
    None: ("batch_expired", "the request's record expired before the batch finished"),
}


async def finalize_batches(redis: Redis) -> list[str]:
    """One pass over the active batches; returns the batches this call finalised."""
    finished = []
    for batch_id in await active_batches(redis):
        try:
            if await finalize_batch(redis, batch_id) is not None:
                finished.append(batch_id)
        except Exception:  # one broken batch must not stop the others, nor the scheduler
            log.exception("finalising batch %s failed", batch_id)
    return finished


async def finalize_batch(redis: Redis, batch_id: str) -> str | None:
    """Advance one batch; returns its final status when this call ended it."""
    record = await load_record(redis, batch_id)
    status = record.get(b"status", b"").decode()
    if not record or status in TERMINAL_BATCH_STATUSES:
        await forget_active(redis, batch_id)  # expired, or ended by another replica
        return None
    store = BatchStore(redis, int(record[b"ttl_s"]))
    now = time.time()
    total = int(record[b"total"])
    if status == "validating":
        if now - float(record[b"created_at"]) < STALE_CREATION_S:
            return None  # still being created
        return await _fail_interrupted(store, batch_id, record)
    ending = None
    if status == "cancelling":
        ending = "cancelled"
    elif now >= float(record[b"expires_at"]):
        ending = "expired"
    scanned = int(record.get(b"scanned", b"0"))
    if ending is None:
        scan = await _scan(store, batch_id, scanned, total, None)
        if not scan.done:
            await store.feed(batch_id)  # as many lines as jobs ended since the last pass
    else:
        # no process may feed the batch while its never-fed lines are counted
        lock = store.feed_lock(batch_id)
        if not await lock.acquire():
            return None
        try:
            scan = await _scan(store, batch_id, scanned, total, ending)
        finally:
            with contextlib.suppress(LockError):
                await lock.release()
    if not scan.done:
        return None
    return await _finalize(store, batch_id)


def _outcome(raw: bytes | None) -> str | None:
    """A job's terminal status; None while it is queued or running. A job whose record
    expired counts as expired."""
    if raw is None:
        return "expired"
    status = raw.decode()
    return None if status in ("queued", "running") else status


async def _scan(
    store: BatchStore, batch_id: str, read: int, total: int, ending: str | None
) -> Scan:
    """Count the ended jobs from ``read`` on, stopping at the first live one (jobs run
    roughly in input order, so few are read twice). An ended job's request payload is
    dropped: only its result is needed now. With ``ending`` (the caller holds the feed
    lock), live jobs are ended with that status, and counted on the next call; lines never
    fed are counted with it at once."""
    done: Counter[str] = Counter()
    ahead: Counter[str] = Counter()
    scanned = start = read
    blocked = False
    listed = await store.listed(batch_id)
    while start < listed and start - read < SCAN_BUDGET:
        ids = await store.job_ids(batch_id, start, start + CHUNK)
        if not ids:  # the job list expired under a batch that outlived its window
            break
        rows = await store.job_fields(ids, *LIVE_FIELDS)
        if ending is not None:
            await store.end_jobs(ids, rows, ending)
        ended = []
        for job_id, (raw, _) in zip(ids, rows, strict=True):
            outcome = _outcome(raw)
            if outcome is None:
                blocked = True
                continue
            if raw is not None:
                ended.append(job_id)
            if blocked:
                ahead[outcome] += 1
            else:
                done[outcome] += 1
                scanned += 1
        await store.drop_payloads(ended)
        start += len(ids)
        if blocked and ending is None:
            break
    if ending is not None and not blocked and scanned == listed:
        done[ending] += total - listed
        scanned = total
    if not await store.record_scan(batch_id, read, scanned, done, ahead):
        scanned = read  # another replica recorded this stretch first
    return Scan(scanned=scanned, total=total)


async def _finalize(store: BatchStore, batch_id: str) -> str | None:
    """Write the files and record the outcome, unless another replica holds the batch."""
    token = secrets.token_hex(16)
    if not await store.claim(batch_id, token, STALE_CLAIM_S):
        return None
    record = await store.record(batch_id)
    if record is None:
        return None
    tenant = record[b"tenant"].decode()
    output, errors = await _render(store, batch_id, record)
    files = FileStore(store.redis, int(record[b"output_ttl_s"]))
    written = {
        name: (await files.create(tenant, f"{batch_id}_{name}.jsonl", OUTPUT_PURPOSE, lines))["id"]
        for name, lines in (("output", output), ("error", errors))
        if lines
    }
    final = await store.commit(
        batch_id,
        token,
        "expired" if int(record.get(b"done_expired", b"0")) else "completed",
        ttl_s=store.ttl_s,
        output_file_id=written.get("output"),
        error_file_id=written.get("error"),
    )
    if final is None:  # held too long and taken over: the other replica's files count
        for file_id in written.values():
            await files.delete(file_id, tenant)
        return None
    await files.unpin(record[b"input_file_id"].decode(), batch_id)
    log.info("batch %s %s (%s)", batch_id, final, ", ".join(written.values()) or "no files")
    return final


async def _fail_interrupted(
    store: BatchStore, batch_id: str, record: dict[bytes, bytes]
) -> str | None:
    """The API process creating the batch died half way: cancel what it queued, fail it."""
    await store.end_all(batch_id, "cancelled")
    token = secrets.token_hex(16)
    if not await store.claim(batch_id, token, STALE_CLAIM_S):
        return None
    listed = await store.listed(batch_id)
    message = f"the batch's creation stopped after {listed} requests; resubmit it"
    log.error("batch %s: %s", batch_id, message)
    await FileStore(store.redis, store.ttl_s).unpin(record[b"input_file_id"].decode(), batch_id)
    return await store.commit(
        batch_id,
        token,
        "failed",
        ttl_s=store.ttl_s,
        errors=[{"code": "batch_creation_interrupted", "message": message}],
    )


async def _render(
    store: BatchStore, batch_id: str, record: dict[bytes, bytes]
) -> tuple[bytes, bytes]:
    """The output and error files' JSONL, in input order. Results are spliced in as
    stored, never decoded, so a large batch costs little more than reading it. Lines the
    batch never reached (it was cancelled or expired first) end the error file."""
    output: list[bytes] = []
    errors: list[bytes] = []
    listed = await store.listed(batch_id)
    for start in range(0, listed, CHUNK):
        ids = await store.job_ids(batch_id, start, start + CHUNK)
        rows = await store.job_fields(ids, "status", "custom_id", "result", "error")
        for job_id, (status, custom_id, result, error) in zip(ids, rows, strict=True):
            request_id = json.dumps(job_id).encode()
            custom = json.dumps(custom_id.decode() if custom_id else None).encode()
            if status == b"succeeded" and result:
                output.append(
                    b'{"id":%s,"custom_id":%s,"response":{"status_code":200,"request_id":%s,'
                    b'"body":%s},"error":null}' % (request_id, custom, request_id, result)
                )
            else:
                errors.append(_error_line(job_id, custom_id, _outcome(status), error))
    if listed < int(record[b"total"]):
        outcome = "cancelled" if record.get(b"status") == b"cancelling" else "expired"
        async for raw in store.unfed_lines(record):
            named = custom_id_of(raw)
            # an id of its own, as every line of the file has, though it never ran
            errors.append(
                _error_line(new_job_id(), named.encode() if named else None, outcome, None)
            )
    return _jsonl(output), _jsonl(errors)


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _error_line(
    job_id: str, custom_id: bytes | None, outcome: str | None, error: bytes | None
) -> bytes:
    """A failed request keeps its HTTP status and error body as ``response``; one that never
    ran (cancelled, expired) has ``response`` null. Both say why in ``error``."""
    response = None
    if outcome in ("failed", "succeeded"):  # succeeded without a result: treat as failed
        body = json.loads(error) if error else {}
        detail = body.get("error") or {"message": "the request failed", "type": "server_error"}
        response = {"status_code": _http_status(detail), "request_id": job_id, "body": body}
        reason = {"code": detail.get("code") or detail.get("type"), "message": detail["message"]}
    else:
        code, message = _ENDED.get(outcome, _ENDED[None])
        reason = {"code": code, "message": message}
    line = {
        "id": job_id,
        "custom_id": custom_id.decode() if custom_id else None,
        "response": response,
        "error": reason,
    }
    return json.dumps(line, separators=(",", ":")).encode()


def _http_status(detail: dict[str, Any]) -> int:
    """The HTTP status a failed request would have had, from its error body."""
    if detail.get("code") in (NotFound.default_code, "model_not_found"):
        return NotFound.status_code
    return _HTTP_STATUS.get(str(detail.get("type")), 500)
