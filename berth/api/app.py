"""The FastAPI app factory: long-lived clients built once in the lifespan, errors mapped once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from berth.api import metrics
from berth.api.auth import KeyRing, parse_keys
from berth.api.directory import WorkerDirectory
from berth.api.ingress import Ingress
from berth.api.relay import TokenRelay
from berth.api.settings import ApiSettings
from berth.protocol.errors import BerthError, InvalidRequest, QueueFull, Unavailable
from berth.store.jobs import JobStore

log = logging.getLogger(__name__)


def _route(request: Request) -> str:
    # the route's template, not the raw path: ids must not become label values
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path))


@dataclass
class ApiState:
    """What every route needs, built once per process."""

    settings: ApiSettings
    redis: Redis
    relay: TokenRelay
    directory: WorkerDirectory
    ingress: Ingress
    keys: KeyRing
    jobs: JobStore


def error_response(err: BerthError, route: str = "/v1/chat/completions") -> JSONResponse:
    """The one place a berth error becomes an HTTP answer."""
    metrics.REQUESTS.labels(route, str(err.status_code)).inc()
    headers = {}
    if isinstance(err, QueueFull | Unavailable):
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(err.body(), status_code=err.status_code, headers=headers)


def create_app(settings: ApiSettings) -> FastAPI:
    keyring = KeyRing(parse_keys(settings.api_keys, settings.api_keys_file))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = settings.redis()
        relay = TokenRelay(redis)
        directory = WorkerDirectory(redis, settings.registry_refresh_s, settings.model_grace_s)
        await relay.start()
        await directory.start()
        app.state.berth = ApiState(
            settings=settings,
            redis=redis,
            relay=relay,
            directory=directory,
            ingress=Ingress(redis, settings.max_queue_per_model, settings.retry_after_s),
            keys=keyring,
            jobs=JobStore(redis, settings.job_ttl_s),
        )
        log.info("api ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            await directory.close()
            await relay.close()
            await redis.aclose()

    app = FastAPI(title="berth", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(BerthError)
    async def _berth_error(request: Request, err: BerthError) -> JSONResponse:
        return error_response(err, _route(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        invalid = InvalidRequest(str(first.get("msg", "invalid request")), param=param)
        return error_response(invalid, _route(request))

    from berth.api.admin import router as admin_router
    from berth.api.batches import router as batches_router
    from berth.api.files import router as files_router
    from berth.api.jobs import router as jobs_router
    from berth.api.routes import router

    app.include_router(router)
    app.include_router(jobs_router)
    app.include_router(admin_router)
    app.include_router(files_router)
    app.include_router(batches_router)
    return app
