"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the store is open and the workers run",
    responses={503: {"description": "Starting up or shutting down."}},
)
def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse(
        {"status": "ready", "devices": service.pool.devices, "queued": service.pool.queued()}
    )
