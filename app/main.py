"""Builds the app: routes, error mapping, the lifespan (open store, start the backend, stop
cleanly). `uvicorn app.main:app` serves the module's `app`, built from the environment."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app.api import health, jobs, pages, schema, sweeps, variants
from app.api import metrics as metrics_route
from app.api.deps import require_token
from app.api.errors import add_error_handlers
from app.backends import make_backend
from app.body_limit import BodyLimit
from app.hub import EventHub
from app.losses import LossReader
from app.metrics import HTTPMetrics, Metrics
from app.server import end_streams_on_stop_signals, redact_tokens_in_logs
from app.service import JobService
from app.settings import Settings
from app.store import DatabaseInUse, Store
from app.stream import EventStreams
from app.sweep_stream import SweepStreams
from app.sweeps import SweepService

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
    redact_tokens_in_logs(settings.webhook_secret)  # never logged anyway: nor by accident
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store = await run_in_threadpool(Store, settings.database_url)
        except DatabaseInUse as exc:
            log.error("cannot start: %s", exc)
            raise
        hub = EventHub()
        service = JobService(
            settings, store, hub, make_backend(settings), metrics.jobs, metrics.webhooks
        )
        metrics.watch(service.consumer, service.backend, hub, store)
        app.state.hub, app.state.store, app.state.service = hub, store, service
        app.state.streams = streams = EventStreams(store, hub, settings.stream_stall_seconds)
        app.state.losses = LossReader(store)
        app.state.sweeps = SweepService(service)
        app.state.sweep_streams = SweepStreams(store, hub, settings.stream_stall_seconds)
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
            streams.close()
            await run_in_threadpool(service.stop)
            await run_in_threadpool(store.close)

    app = FastAPI(
        title="trainwire",
        version="0.1.0",
        summary="The programs of 'Learning PyTorch with Examples' as jobs, every step's loss live.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=schema.operation_id,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    # not FastAPI's max_body_size, whose 413 is plain text when the body has a Content-Length
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    # the schema says what the server does: bearer auth and its 401 only when a token is set
    guarded = settings.api_token is not None
    auth = [Depends(require_token)] if guarded else []
    unauthorized = UNAUTHORIZED if guarded else None
    app.include_router(variants.router, prefix="/v1", dependencies=auth, responses=unauthorized)
    app.include_router(jobs.router, prefix="/v1", dependencies=auth, responses=unauthorized)
    app.include_router(sweeps.router, prefix="/v1", dependencies=auth, responses=unauthorized)
    app.include_router(metrics_route.router, dependencies=auth)
    app.include_router(health.router)
    pages.mount_pages(app)
    add_error_handlers(app)
    schema.install(app)
    app.add_middleware(HTTPMetrics, metrics=metrics)
    return app


app = create_app()
