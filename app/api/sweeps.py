"""Sweeps: a grid of runs submitted, read, listed, cancelled and deleted as one; their stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.background import BackgroundTask

from app.api.deps import IdempotencyKey, created, known_query
from app.api.jobs import ID_PREFIX, LABEL
from app.stream import EventStreamResponse
from app.sweep_stream import MAX_AFTER_LENGTH, MAX_CURSOR_LENGTH, SweepStreams
from app.sweeps import SweepService
from trainwire.jobs import VariantName
from trainwire.models import WebhookDeliveryList
from trainwire.sweeps import Sweep, SweepCreate, SweepList, SweepStatus

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No sweep with this id."}}


async def get_sweeps(request: Request) -> SweepService:
    sweeps: SweepService = request.app.state.sweeps
    return sweeps


async def get_sweep_streams(request: Request) -> SweepStreams:
    streams: SweepStreams = request.app.state.sweep_streams
    return streams


Sweeps = Annotated[SweepService, Depends(get_sweeps)]
Streams = Annotated[SweepStreams, Depends(get_sweep_streams)]


@router.post(
    "",
    status_code=201,
    summary="Submit a sweep",
    responses={
        201: {
            "headers": {
                "Location": {"description": "/v1/sweeps/{id}", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when an earlier request with the same "
                    "Idempotency-Key made it.",
                    "schema": {"type": "string"},
                },
            }
        },
        409: {"description": "The sweep this Idempotency-Key created has been deleted since."},
        400: {"description": "The body is not UTF-8 text."},
        413: {"description": "The body is over 1 MiB."},
        422: {
            "description": "A field or a value of the grid is wrong (`detail[].loc` names it, "
            "with the value's index in its list), a field is both shared and swept, or the grid "
            "makes more runs than TRAINWIRE_MAX_SWEEP_RUNS."
        },
        429: {"description": "The queue cannot take every run; see Retry-After."},
    },
)
async def submit_sweep(
    body: SweepCreate, sweeps: Sweeps, response: Response, idempotency_key: IdempotencyKey = None
) -> Sweep:
    """Queue every combination of the grid's values as a job of its own, all or none. A run's
    seed is the grid's `seed` where it has one, else the sweep's (`seed`, or one drawn)."""
    submitted = await sweeps.submit(body, idempotency_key)
    created(response, f"/v1/sweeps/{submitted.made.id}", submitted.replayed)
    return submitted.made


@router.get(
    "",
    summary="List sweeps, newest first",
    dependencies=[
        Depends(known_query("status", "variant", "limit", "cursor", "label", "id_prefix"))
    ],
)
async def list_sweeps(
    sweeps: Sweeps,
    status: Annotated[
        list[SweepStatus] | None, Query(description="Only sweeps in these states (repeatable).")
    ] = None,
    variant: Annotated[
        list[VariantName] | None, Query(description="Only sweeps of these variants (repeatable).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
    label: LABEL = None,
    id_prefix: ID_PREFIX = None,
) -> SweepList:
    items, next_cursor = await sweeps.list_sweeps(
        limit,
        cursor,
        [s.value for s in status or []],
        list(variant or []),
        labels=label,
        id_prefix=id_prefix,
    )
    return SweepList(items=items, next_cursor=next_cursor)


@router.get("/{sweep_id}", summary="Get a sweep and its runs", responses=_NOT_FOUND)
async def get_sweep(sweep_id: str, sweeps: Sweeps) -> Sweep:
    return await sweeps.get(sweep_id)


@router.get(
    "/{sweep_id}/deliveries", summary="The webhook deliveries of a sweep", responses=_NOT_FOUND
)
async def list_sweep_deliveries(sweep_id: str, sweeps: Sweeps) -> WebhookDeliveryList:
    """Its webhook's notifications (its end), oldest first, and how sending each went."""
    return WebhookDeliveryList(items=await sweeps.deliveries(sweep_id))


@router.post(
    "/{sweep_id}/cancel",
    status_code=202,
    summary="Cancel every run of a sweep that is not final",
    responses={**_NOT_FOUND, 409: {"description": "Every run of the sweep is final."}},
)
async def cancel_sweep(sweep_id: str, sweeps: Sweeps) -> Sweep:
    """Queued runs are cancelled at once, running ones before their next step; the sweep's
    status becomes `cancelled` once every run is final."""
    return await sweeps.cancel(sweep_id)


@router.post(
    "/{sweep_id}/pause",
    status_code=202,
    summary="Pause every queued or running run of a sweep",
    responses={**_NOT_FOUND, 409: {"description": "Every run of the sweep is final."}},
)
async def pause_sweep(sweep_id: str, sweeps: Sweeps) -> Sweep:
    """As `POST /v1/jobs/{id}/pause` for each run (the runs of a fused group go on: they do not
    pause alone)."""
    return await sweeps.pause(sweep_id)


@router.post(
    "/{sweep_id}/resume",
    status_code=202,
    summary="Resume every paused run of a sweep",
    responses={**_NOT_FOUND, 409: {"description": "Every run of the sweep is final."}},
)
async def resume_sweep(sweep_id: str, sweeps: Sweeps) -> Sweep:
    """As `POST /v1/jobs/{id}/resume` for each paused run."""
    return await sweeps.resume(sweep_id)


@router.delete(
    "/{sweep_id}",
    status_code=204,
    summary="Delete a sweep, its runs and their losses",
    responses={**_NOT_FOUND, 409: {"description": "A run of the sweep is queued or running."}},
)
async def delete_sweep(sweep_id: str, sweeps: Sweeps) -> Response:
    await sweeps.delete(sweep_id)
    return Response(status_code=204)


@router.get(
    "/{sweep_id}/events",
    summary="Live stream of every run's losses and the sweep's progress",
    responses={
        **_NOT_FOUND,
        200: {
            "description": "`sweep` (data: the sweep), then `loss` events (data: "
            '{"job_id": "...", "step": n, "loss": x}) for every step of every run, the '
            "stored history first, then live; `sweep` again when runs change status; a final "
            "`sweep` once every run is final, after which the server ends the stream. Every "
            "`sweep` event and the last `loss` event of each batch carry an `id:`: each run's "
            "next step, in the runs' order (`1200.1200.800`, equal neighbours shortened: "
            "`1200x2.800`); send it back as `Last-Event-ID` (or `?after=`) to go on from there, "
            "every step once.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def stream_sweep_events(
    sweep_id: str,
    streams: Streams,
    max_points: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="Thin each run's stored history to at most this many real points, as "
            "/losses?max_points does; live steps all come.",
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=MAX_AFTER_LENGTH,
            description="An event's id: go on after it (as Last-Event-ID does; a longer id "
            "goes in that header).",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=MAX_CURSOR_LENGTH,
            description="Sent by EventSource on reconnect: go on after this event's id.",
        ),
    ] = None,
) -> Response:
    stream = await streams.events(sweep_id, max_points, [last_event_id or "", after or ""])
    return EventStreamResponse(
        stream,
        stall_seconds=streams.stall_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # close the stream's generator (and its subscriptions) even if the client vanished
        background=BackgroundTask(stream.aclose),  # type: ignore[attr-defined]
    )
