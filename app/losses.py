"""A job's recorded losses: JSON pages, CSV rows, and a downsampled curve for charts."""

from __future__ import annotations

import math
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool

from app.service import find_job
from app.store import Store


class LossReader:
    def __init__(self, store: Store):
        self.store = store

    async def losses(
        self, job_id: str, after: int, limit: int
    ) -> tuple[list[int], list[float | None], int | None]:
        row = await find_job(self.store, job_id)
        steps, values = await run_in_threadpool(self.store.read_losses, row.pk, after, limit + 1)
        more = len(steps) > limit
        steps, values = steps[:limit], values[:limit]
        return steps, values, steps[-1] if more else None

    async def losses_downsampled(
        self, job_id: str, max_points: int, after: int
    ) -> tuple[list[int], list[float | None]]:
        row = await find_job(self.store, job_id)
        # the steps stored when the job was read: a running job stores more meanwhile, and
        # buckets sized for fewer steps than are read would return more than max_points
        first = after + 1
        return await run_in_threadpool(
            downsample,
            self.store.iter_losses(row.pk, after),
            first,
            max(0, row.step - first),
            max_points,
        )

    async def csv_rows(
        self, job_id: str, after: int, limit: int | None = None, max_points: int | None = None
    ) -> Iterator[str]:
        """`step,loss` rows: every loss after `after` (at most `limit`), or downsampled."""
        if max_points is not None:
            steps, values = await self.losses_downsampled(job_id, max_points, after)
            pages: Iterator[tuple[list[int], list[float | None]]] = iter([(steps, values)])
        else:
            row = await find_job(self.store, job_id)
            pages = self.store.iter_losses(row.pk, after, limit=limit)

        def rows() -> Iterator[str]:
            yield "step,loss\n"
            for steps, values in pages:
                yield "".join(
                    f"{s},{'' if v is None else repr(v)}\n"
                    for s, v in zip(steps, values, strict=True)
                )

        return rows()


def downsample(
    pages: Iterator[tuple[list[int], list[float | None]]],
    first: int,
    total: int,
    max_points: int,
) -> tuple[list[int], list[float | None]]:
    """At most max_points real points of steps [first, first + total): each bucket of steps
    keeps its lowest and highest loss."""
    per_bucket = 2 if max_points >= 2 else 1
    buckets = max(1, max_points // per_bucket)
    width = max(1, math.ceil(max(total, 1) / buckets))
    kept: dict[int, tuple[int, float | None]] = {}  # step -> point

    current = -1
    lo: tuple[int, float] | None = None
    hi: tuple[int, float] | None = None
    first_null: int | None = None

    def close() -> None:
        if lo is None:
            if first_null is not None:
                kept[first_null] = (first_null, None)
            return
        kept[lo[0]] = lo
        if per_bucket == 2 and hi is not None:
            kept[hi[0]] = hi

    end = first + total
    for steps, values in pages:
        if steps[0] >= end:
            break
        for step, value in zip(steps, values, strict=True):
            if step >= end:
                break
            bucket = (step - first) // width
            if bucket != current:
                if current >= 0:
                    close()
                current, lo, hi, first_null = bucket, None, None, None
            if value is None:
                if first_null is None:
                    first_null = step
                continue
            if lo is None or value < lo[1]:
                lo = (step, value)
            if hi is None or value > hi[1]:
                hi = (step, value)
    if current >= 0:
        close()
    points = sorted(kept.values())
    return [p[0] for p in points], [p[1] for p in points]
