"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from app.store import Store

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the store is open and every worker can take a job",
    responses={
        503: {
            "description": "Starting up (the workers' processes load torch and warm up for a "
            "few seconds), shutting down, a worker that cannot take jobs (its process is gone "
            "or stopped), or a job store that cannot write (a full disk: training pauses "
            "until it can). Jobs submitted while starting are queued."
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    if not service.store.writable or not await _reachable(service.store):
        return JSONResponse(
            {"status": "unavailable", "reason": "the job store cannot write"}, status_code=503
        )
    if not service.backend.ready:
        return JSONResponse(
            {"status": "unavailable", "reason": "a worker cannot take jobs"}, status_code=503
        )
    backend = service.backend
    ready = {"status": "ready", "devices": backend.devices, "queued": backend.queued()}
    nodes = backend.nodes  # a cluster's nodes (the Ray backend)
    return JSONResponse(ready if nodes is None else {**ready, "nodes": nodes})


PROBE_SECONDS = 2.0  # a store that does not answer a read in this long is not ready


async def _reachable(store: Store) -> bool:
    """Whether the database answers a read now (a server gone is noticed before a write)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await run_in_threadpool(store.probe)
    except (TimeoutError, OperationalError, InterfaceError):
        return False
    return True
