"""Builds the app: routes, error mapping, the lifespan (open store, start pool, stop cleanly)."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api import health, jobs, pages, variants
from app.api.deps import require_token
from app.body_limit import BodyLimit
from app.errors import InvalidField, JobFinal, JobNotFinal, JobNotFound
from app.hub import EventHub
from app.server import end_streams_on_stop_signals, redact_tokens_in_logs
from app.service import JobService
from app.settings import Settings
from app.store import DatabaseInUse, Store
from workers.pool import QueueFull

log = logging.getLogger("trainwire")

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "The server sets TRAINWIRE_API_TOKEN and the request lacks it.",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            }
        },
    }
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    redact_tokens_in_logs(settings.api_token)  # `uvicorn app.main:app` logs requests too

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store = await run_in_threadpool(Store, settings.database_url)
        except DatabaseInUse as exc:
            log.error("cannot start: %s", exc)
            raise
        hub = EventHub()
        service = JobService(settings, store, hub)
        app.state.hub, app.state.store, app.state.service = hub, store, service
        await run_in_threadpool(service.start)
        # what start-up built (modules, routes, schemas) lives as long as the process: keep it
        # out of the garbage collector's scans, which otherwise grow with every import
        gc.freeze()
        restore_signals = end_streams_on_stop_signals(hub)
        try:
            yield
        finally:
            restore_signals()
            hub.close()
            await run_in_threadpool(service.stop)
            await run_in_threadpool(store.close)

    app = FastAPI(
        title="trainwire",
        version="0.1.0",
        summary="The programs of 'Learning PyTorch with Examples' as jobs, every step's loss live.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # not FastAPI's max_body_size, whose 413 is plain text when the body has a Content-Length
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location", "Retry-After"],
        )
    # the schema says what the server does: bearer auth and its 401 only when a token is set
    guarded = settings.api_token is not None
    auth = [Depends(require_token)] if guarded else []
    unauthorized = UNAUTHORIZED if guarded else None
    app.include_router(variants.router, prefix="/v1", dependencies=auth, responses=unauthorized)
    app.include_router(jobs.router, prefix="/v1", dependencies=auth, responses=unauthorized)
    app.include_router(health.router)
    pages.mount_pages(app)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(JobFinal)
    @app.exception_handler(JobNotFinal)
    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc.errors())

    @app.exception_handler(InvalidField)
    async def invalid(_: Request, exc: InvalidField) -> JSONResponse:
        # the same shape as FastAPI's own validation errors
        return _validation_response(exc.errors)


MAX_LISTED_ERRORS = 50


def _validation_response(errors: Sequence[Any]) -> JSONResponse:
    """FastAPI's 422 body, made strict JSON whatever the client sent.

    FastAPI echoes each wrong value as `input`: a `NaN` (which Python's json parser accepts) or a
    lone surrogate (`"\\ud800"`) would make rendering the error itself fail with a 500.
    A body can hold tens of thousands of wrong fields: the first MAX_LISTED_ERRORS are listed,
    then one more item (same shape: loc, msg, type) counts the rest.
    """
    listed = list(errors[:MAX_LISTED_ERRORS])
    if len(errors) > MAX_LISTED_ERRORS:
        more = len(errors) - MAX_LISTED_ERRORS
        listed.append(
            {
                "loc": list(errors[0]["loc"][:1]),
                "msg": f"{more:,} more errors not listed",
                "type": "too_many_errors",
            }
        )
    return JSONResponse({"detail": _json_safe(jsonable_encoder(listed))}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": what was sent, as a string
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    return value


def __getattr__(name: str) -> Any:
    """`uvicorn app.main:app`: the app is built from the environment on first use, so importing
    this module (as `trainwire serve` does) builds nothing and reads no settings."""
    if name == "app":
        built = globals()["app"] = create_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
