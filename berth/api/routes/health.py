"""Probes and metrics: /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from berth.api.deps import State
from berth.protocol import keys

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    """Readiness: Redis answers, and at least one worker and one scheduler are alive."""
    try:
        await state.redis.ping()
        await state.directory.refresh()
    except Exception as err:
        log.warning("readiness: redis failed: %s", err)
        # the error's text names hosts and internals: only when the operator asks
        reason = f"redis: {err}" if state.settings.ready_details else "redis unreachable"
        return JSONResponse({"status": "unready", "reason": reason}, status_code=503)
    workers = len(state.directory.workers)
    if workers == 0:
        return JSONResponse({"status": "unready", "reason": "no live worker"}, status_code=503)
    schedulers = [k async for k in state.redis.scan_iter(match=f"{keys.SCHEDULER_KEY_PREFIX}*")]
    if not schedulers:
        return JSONResponse({"status": "unready", "reason": "no live scheduler"}, status_code=503)
    return JSONResponse({"status": "ready", "workers": workers, "schedulers": len(schedulers)})
