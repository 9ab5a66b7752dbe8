"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
            "few seconds) or shutting down. Jobs submitted meanwhile are queued."
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready or not service.pool.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse(
        {"status": "ready", "devices": service.pool.devices, "queued": service.pool.queued()}
    )
