"""Probes and metrics: /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from berth.api.deps import State
from berth.api.directory import REDIS_PROBE_S
from berth.store.registry import live_schedulers

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    # several API processes (berth/api/serve.py): the samples of all of them, summed
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers (also while Redis is away: restarting the API would
    not bring Redis back)."""
    return {"status": "ok"}


def _redis_reason(state: State, err: object) -> str:
    log.warning("readiness: redis failed: %s", err)
    # the error's text names hosts and internals: only when the operator asks
    return f"redis: {err}" if state.settings.ready_details else "redis unreachable"


def _unready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unready", "reason": reason}, status_code=503)


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    """Readiness: the process can take requests, which is Redis answering. Workers and
    schedulers do not count: jobs, batches, files and the model list work while they come
    and go, and a chat for a model with no live worker gets its own 503; an API pod out of
    its Service would refuse all of those. The body says how many of each are live, for
    people. Answers within a few seconds whatever Redis does, and recovers by itself when
    Redis is back."""
    if not await state.directory.probe():
        return _unready(_redis_reason(state, state.directory.redis_error))
    try:
        async with asyncio.timeout(REDIS_PROBE_S):
            schedulers = await live_schedulers(state.redis)
    except Exception as err:
        return _unready(_redis_reason(state, err or type(err).__name__))
    return JSONResponse(
        {
            "status": "ready",
            "workers": len(state.directory.workers),
            "schedulers": len(schedulers),
        }
    )
