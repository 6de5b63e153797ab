"""The FastAPI app factory: long-lived clients built once in the lifespan, errors mapped once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from berth.api.auth import KeyRing, admin_ring, parse_keys
from berth.api.directory import WorkerDirectory
from berth.api.errors import error_response
from berth.api.followers import StreamFollowers
from berth.api.ingress import Ingress
from berth.api.relay import TokenRelay
from berth.api.routes import admin, batches, chat, files, health, jobs, models
from berth.api.settings import ApiSettings
from berth.api.state import ApiState
from berth.protocol.errors import BerthError, InvalidRequest
from berth.store.adapters import AdapterStore
from berth.store.batches import BatchStore
from berth.store.files import FileStore
from berth.store.jobs import JobStore

log = logging.getLogger(__name__)


def _route(request: Request) -> str:
    # the route's template, not the raw path: ids must not become label values
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path))


def create_app(settings: ApiSettings) -> FastAPI:
    keyring = KeyRing(parse_keys(settings.api_keys, settings.api_keys_file))
    if keyring.open:
        log.warning("no API keys configured: berth is open to anyone who can reach it")
    admin_keys = admin_ring(settings.admin_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = settings.redis()
        relay = TokenRelay(redis)
        directory = WorkerDirectory(redis, settings.registry_refresh_s, settings.model_grace_s)
        followers = StreamFollowers(redis)
        await relay.start()
        await directory.start()
        await followers.start()
        app.state.berth = ApiState(
            settings=settings,
            redis=redis,
            relay=relay,
            directory=directory,
            ingress=Ingress(redis, settings.max_queue_per_model, settings.retry_after_s),
            keys=keyring,
            admin_keys=admin_keys,
            jobs=JobStore(redis, settings.job_ttl_s),
            files=FileStore(redis, settings.job_ttl_s),
            batches=BatchStore(redis, settings.job_ttl_s),
            adapters=AdapterStore(redis),
            followers=followers,
        )
        log.info("api ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            await followers.close()
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

    for feature in (chat, models, health, jobs, admin, files, batches):
        app.include_router(feature.router)
    return app
