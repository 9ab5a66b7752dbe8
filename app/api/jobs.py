"""Jobs: submit, read, list, cancel, delete; their losses; their live event stream."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import StringConstraints
from starlette.background import BackgroundTask

from app.api.deps import IdempotencyKey, LossesOf, Service, Streams, created, known_query
from app.errors import InvalidField
from app.stream import EventStreamResponse
from trainwire.models import (
    CheckpointList,
    Job,
    JobCreate,
    JobList,
    JobStatus,
    Losses,
    VariantName,
    WebhookDeliveryList,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_STEP = 2**53  # steps are far fewer; bounds keep every value an SQL integer
_EVENT_ID = re.compile(r"-1|[0-9]+")  # ASCII digits only (int() takes any Unicode digit)

# list filters shared with the sweeps' listing
LABEL = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None,
    Query(description="Only those with one of these labels, exactly (repeatable)."),
]
ID_PREFIX = Annotated[
    str | None,
    Query(
        pattern="^[0-9a-f]{1,16}$",
        description="Only those whose id starts with these hex digits (the short ids the "
        "dashboard and the CLI show).",
    ),
]

_CREATED_HEADERS: dict[str, Any] = {
    "Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when an earlier request with the same Idempotency-Key made it.",
        "schema": {"type": "string"},
    },
}

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No job with this id."}}
_STORE_UNWRITABLE: dict[str, Any] = {
    "description": "The job store cannot write now (a full disk, a database that went away); "
    "training pauses until it can. See Retry-After."
}


@router.post(
    "",
    status_code=201,
    summary="Submit a job",
    responses={
        201: {"headers": _CREATED_HEADERS},
        409: {"description": "The job this Idempotency-Key created has been deleted since."},
        413: {"description": "The body is over 1 MiB."},
        400: {"description": "The body is not UTF-8 text."},
        404: {"description": "A fork's `from.job_id` names no job."},
        422: {"description": "A field is wrong; `detail[].loc` names it."},
        429: {"description": "The queue is full; see Retry-After."},
        503: _STORE_UNWRITABLE,
    },
)
async def submit_job(
    job: JobCreate, service: Service, response: Response, idempotency_key: IdempotencyKey = None
) -> Job:
    """Queue a training job. Its hyperparameters are resolved against the variant's defaults
    and recorded with the seed, so that the run can be repeated exactly."""
    submitted = await service.submit(job, idempotency_key)
    created(response, f"/v1/jobs/{submitted.made.id}", submitted.replayed)
    return submitted.made


@router.get(
    "",
    summary="List jobs, newest first",
    dependencies=[
        Depends(known_query("status", "variant", "limit", "cursor", "sweep", "label", "id_prefix"))
    ],
)
async def list_jobs(
    service: Service,
    status: Annotated[
        list[JobStatus] | None, Query(description="Only jobs in these states (repeatable).")
    ] = None,
    variant: Annotated[
        list[VariantName] | None, Query(description="Only jobs of these variants (repeatable).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
    sweep: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None,
        Query(description="Only the runs of these sweeps (repeatable)."),
    ] = None,
    label: LABEL = None,
    id_prefix: ID_PREFIX = None,
) -> JobList:
    items, next_cursor = await service.list_jobs(
        limit,
        cursor,
        [s.value for s in status or []],
        list(variant or []),
        sweep,
        labels=label,
        id_prefix=id_prefix,
    )
    return JobList(items=items, next_cursor=next_cursor)


@router.get("/{job_id}", summary="Get a job", responses=_NOT_FOUND)
async def get_job(job_id: str, service: Service) -> Job:
    return await service.get(job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Cancel a queued or running job",
    responses={
        **_NOT_FOUND,
        409: {"description": "The job is already final."},
        503: _STORE_UNWRITABLE,
    },
)
async def cancel_job(job_id: str, service: Service) -> Job:
    """A queued job is cancelled at once; a running one stops before its next step (its
    stream then carries the final `cancelled` status)."""
    return await service.cancel(job_id)


@router.post(
    "/{job_id}/pause",
    status_code=202,
    summary="Pause a queued or running job",
    responses={
        **_NOT_FOUND,
        409: {"description": "The job is neither queued nor running."},
        503: _STORE_UNWRITABLE,
    },
)
async def pause_job(job_id: str, service: Service) -> Job:
    """A queued job is paused at once; a running one stops before its next step with its state
    checkpointed (its stream then carries the `paused` status, and stays open)."""
    return await service.pause(job_id)


@router.post(
    "/{job_id}/resume",
    status_code=202,
    summary="Resume a paused job",
    responses={
        **_NOT_FOUND,
        409: {"description": "The job is not paused."},
        429: {"description": "The queue is full; see Retry-After."},
        503: _STORE_UNWRITABLE,
    },
)
async def resume_job(job_id: str, service: Service) -> Job:
    """Queued again; it goes on from its newest checkpoint, and its curve is that of the job
    that never stopped, bit for bit."""
    return await service.resume(job_id)


@router.get("/{job_id}/checkpoints", summary="A job's checkpoints", responses=_NOT_FOUND)
async def list_checkpoints(job_id: str, service: Service) -> CheckpointList:
    """Its saved states, in step order: the newest few (TRAINWIRE_CHECKPOINTS_KEPT) and the
    final one (step = steps: the trained weights)."""
    return CheckpointList(items=await service.checkpoints(job_id))


@router.get("/{job_id}/deliveries", summary="A job's webhook deliveries", responses=_NOT_FOUND)
async def list_deliveries(job_id: str, service: Service) -> WebhookDeliveryList:
    """Its webhook's notifications, oldest first, and how sending each went (pending,
    delivered, failed: given up after TRAINWIRE_WEBHOOK_ATTEMPTS)."""
    return WebhookDeliveryList(items=await service.deliveries(job_id))


@router.get(
    "/{job_id}/checkpoints/{step}",
    summary="A checkpoint's safetensors file",
    response_class=FileResponse,
    responses={
        404: {"description": "No job with this id, or no checkpoint of this step."},
        200: {
            "description": "The safetensors file; `X-Checkpoint-SHA256` is its sha256.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def get_checkpoint(
    job_id: str,
    service: Service,
    step: Annotated[int, Path(ge=0, le=MAX_STEP)],
) -> FileResponse:
    path, row = await service.checkpoint_file(job_id, step)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{job_id}-{step}.safetensors",
        headers={"X-Checkpoint-SHA256": row.sha256, "ETag": f'"{row.sha256}"'},
    )


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a final job and its losses",
    responses={
        **_NOT_FOUND,
        409: {"description": "The job is queued or running."},
        503: _STORE_UNWRITABLE,
    },
)
async def delete_job(job_id: str, service: Service) -> Response:
    await service.delete(job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/losses",
    summary="Recorded losses",
    responses={
        **_NOT_FOUND,
        200: {
            "model": Losses,
            "content": {
                "application/json": {
                    "example": {
                        "job_id": "3f2a9c0d1e2b4a5f",
                        "steps": [0, 1, 2],
                        "losses": [31123.2, 27864.9, 25143.0],
                        "next_after": 2,
                    }
                },
                "text/csv": {"schema": {"type": "string"}, "example": "step,loss\n0,1.5\n"},
            },
        },
    },
)
async def get_losses(
    job_id: str,
    losses: LossesOf,
    request: Request,
    after: Annotated[int, Query(ge=-1, le=MAX_STEP, description="Only steps after this one.")] = -1,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="Most points per page: 10,000 when not given. CSV: every point after "
            "`after` when not given.",
        ),
    ] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="Downsample the whole run to at most this many real points, keeping "
            "each bucket's lowest and highest loss (for charts).",
        ),
    ] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="csv: `step,loss` rows, like `Accept: text/csv`."),
    ] = None,
) -> Response:
    """Losses in step order, as JSON pages (`next_after`), as CSV, or downsampled."""
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    if wants_csv:
        rows = await losses.csv_rows(job_id, after, limit, max_points)
        return StreamingResponse(
            rows,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-losses.csv"'},
        )
    if max_points is not None:
        steps, values = await losses.losses_downsampled(job_id, max_points, after)
        body = Losses(job_id=job_id, steps=steps, losses=values, next_after=None)
    else:
        steps, values, next_after = await losses.losses(job_id, after, limit or 10_000)
        body = Losses(job_id=job_id, steps=steps, losses=values, next_after=next_after)
    return Response(body.model_dump_json(), media_type="application/json")


@router.get(
    "/{job_id}/events",
    summary="Live stream of status and loss events",
    responses={
        **_NOT_FOUND,
        200: {
            "description": "Server-sent events (`text/event-stream`), in this order: a `status` "
            "event (data: the Job as JSON), then one `loss` event per step (`id:` the step, "
            'data: `{"step": n, "loss": x}`, `loss` null where it was not finite) from the '
            "first step not yet seen, live ones as they happen, a `status` event whenever the "
            "job's status changes, and the final `status` last; the server then ends the "
            "stream. `retry:` tells a reconnecting client how long to wait; send the last `id:` "
            "back as `Last-Event-ID` to resume after it. Idle streams carry `: ping` comments "
            "every 15 s.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: status\ndata: {"id": "3f2a9c0d1e2b4a5f", "status": '
                    '"running", ...}\n\nid: 0\nevent: loss\ndata: {"step": 0, "loss": '
                    "31123.2}\n\n",
                }
            },
        },
    },
)
async def stream_job_events(
    job_id: str,
    streams: Streams,
    after: Annotated[
        int | None,
        Query(ge=-1, le=MAX_STEP, description="Start the losses after this step."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="Sent by EventSource on reconnect: resume after this step."),
    ] = None,
) -> Response:
    """Server-sent events: replay from the start (or from `after` / `Last-Event-ID`), then
    live, every step exactly once and in order. Idle streams carry `: ping` comments."""
    start = after if after is not None else -1
    if last_event_id:
        # an id this server sent (a step), or -1; int() would also take "1_7", "+17", "-0"
        resume = int(last_event_id) if _EVENT_ID.fullmatch(last_event_id) else None
        if resume is None or resume > MAX_STEP:
            raise InvalidField(
                ("header", "last-event-id"), "must be the id of a loss event (a step) or -1"
            )
        # a browser reconnecting keeps its first URL's ?after=: the later position wins
        start = max(start, resume)
    stream = await streams.events(job_id, start)
    return EventStreamResponse(
        stream,
        stall_seconds=streams.stall_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # close the stream's generator (and its subscription) even if the client vanished
        background=BackgroundTask(stream.aclose),  # type: ignore[attr-defined]
    )
