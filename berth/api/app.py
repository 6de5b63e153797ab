"""The FastAPI app factory: long-lived clients built once in the lifespan, errors mapped once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from berth.api import metrics
from berth.api.delivery.followers import StreamFollowers
from berth.api.delivery.relay import TokenRelay
from berth.api.directory import WorkerDirectory
from berth.api.errors import error_response
from berth.api.intake.auth import KeyRing, admin_ring, parse_keys
from berth.api.intake.ingress import Ingress
from berth.api.middleware import HttpMiddleware, count_refused_early, stamp_request_id
from berth.api.presence import ApiPresence
from berth.api.routes import admin, batches, chat, completions, files, health, jobs, models
from berth.api.settings import ApiSettings
from berth.api.state import ApiState
from berth.limits import Quotas, RefuseOverRate, limit_book
from berth.plumbing.models_file import read_models_file
from berth.protocol.errors import (
    BerthError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    StoreUnavailable,
)
from berth.store.adapters import AdapterStore
from berth.store.batches import BatchStore
from berth.store.catalog import Catalog
from berth.store.files import FileStore
from berth.store.jobs import JobStore

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings) -> FastAPI:
    keyring = KeyRing(parse_keys(settings.api_keys, settings.api_keys_file))
    if keyring.open:
        if not settings.allow_anonymous:
            raise SystemExit(
                "no API keys: set BERTH_API_KEYS (tenant:key pairs) or BERTH_API_KEYS_FILE, "
                "or pass --allow-anonymous to serve anyone who reaches the port"
            )
        log.warning("--allow-anonymous: berth is open to anyone who can reach it")
    admin_keys = admin_ring(settings.admin_keys)
    # read now, so a malformed overrides file stops the start, not the first request
    book = limit_book(settings)
    # likewise the model catalog file, written to Redis by the directory's first read
    declared = read_models_file(settings.models_file)
    metrics.configure(settings.metrics_tenants)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = settings.redis()
        presence = ApiPresence(redis)
        followers = StreamFollowers(redis)
        # events of the requests queued here come on this process's own channel
        relay = TokenRelay(redis, presence.instance, followers)
        directory = WorkerDirectory(
            redis,
            settings.registry_refresh_s,
            settings.model_grace_s,
            lora_paths=settings.allow_lora_paths,
            seed=declared,
        )
        quotas = Quotas(redis, settings, book)
        # none of these needs Redis (compose or Kubernetes may start the API first): each
        # starts its loop, which connects when it can; the directory's first read is bounded
        await relay.start()
        await directory.start()
        await followers.start()
        await presence.start()
        app.state.berth = ApiState(
            settings=settings,
            redis=redis,
            relay=relay,
            directory=directory,
            ingress=Ingress(redis, quotas),
            quotas=quotas,
            keys=keyring,
            admin_keys=admin_keys,
            jobs=JobStore(redis, settings.job_ttl_s),
            files=FileStore(redis, settings.job_ttl_s),
            batches=BatchStore(redis, settings.job_ttl_s),
            adapters=AdapterStore(redis),
            catalog=Catalog(redis),
            followers=followers,
            instance=presence.instance,
        )
        log.info("api ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            await followers.close()
            await presence.close()
            await directory.close()
            await relay.close()
            await redis.aclose()

    app = FastAPI(title="berth", version=version("berth"), lifespan=lifespan)

    @app.exception_handler(BerthError)
    async def _berth_error(request: Request, err: BerthError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_away(request: Request, err: Exception) -> JSONResponse:
        # Redis went away in the middle of a request: retrying soon helps, a 500 would not
        log.warning("redis unreachable during %s: %s", request.url.path, err)
        away = StoreUnavailable("the request queue (Redis) cannot be reached; retry shortly")
        return error_response(away)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        invalid = InvalidRequest(str(first.get("msg", "invalid request")), param=param)
        return error_response(invalid)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        # Starlette's own answers (no such route, a method the route does not take) in the
        # OpenAI error body like every other error, not FastAPI's {"detail": ...}
        method, path = request.method, request.url.path
        known: BerthError
        if err.status_code == 404:
            known = NotFound(f"no route {method} {path}", code="route_not_found")
        elif err.status_code == 405:
            allowed = (err.headers or {}).get("Allow", "")
            known = MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}")
        else:
            known = BerthError(str(err.detail))
            known.status_code = err.status_code
            known.error_type = "invalid_request_error" if err.status_code < 500 else "server_error"
        answer = error_response(known)
        answer.headers.update(err.headers or {})
        return answer

    for feature in (chat, completions, models, health, jobs, admin, files, batches):
        app.include_router(feature.router)
    # inside Starlette's ServerErrorMiddleware: it sees every answer, and an unhandled
    # exception before the server turns it into a 500; its span (tracing on) is current for
    # everything the request does
    app.add_middleware(HttpMiddleware)
    # outermost of ours: a tenant known to be over its rate costs none of the above
    app.add_middleware(
        RefuseOverRate, render=error_response, count=count_refused_early, stamp=stamp_request_id
    )
    return app
