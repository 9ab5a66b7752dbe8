"""The sweep service: a grid of runs validated, stored and queued as one request.

Every run is an ordinary job with the sweep's id, queued through the same consumer and backend
as any other job; runs that share everything but learning rate and seed go to the backend as a
group to fuse when the sweep asks for it (`fuse`). A sweep is admitted whole or not at all:
every run is validated, room is held in the queue for all of them, and the sweep is stored with
all its runs in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import shutil
from functools import partial
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.consumer import utcnow
from app.errors import (
    InvalidFields,
    JobFinal,
    JobNotFound,
    JobStateConflict,
    SweepFinal,
    SweepNotFinal,
    SweepNotFound,
)
from app.pagination import decode_cursor, draw_seed, encode_cursor, is_job_id, new_job_id
from app.service import JobService, Submitted
from app.store import JobRow
from app.store.idempotency import Claimed
from app.store.sweeps import SweepRow, SweepStore, exact_default
from app.store.webhooks import SWEEP_EVENTS
from app.webhooks import stored_webhook
from trainwire.hyperparameters import Hyperparameters
from trainwire.jobs import JobSpec, JobStatus
from trainwire.models import WebhookDelivery
from trainwire.sweeps import Sweep, SweepCreate
from workers.backend import DeviceUnavailable
from workers.fused.groups import plan_groups
from workers.hyperparameters import HyperparameterError, check_limits, parse_hyperparameters
from workers.variants import VARIANTS

SEED_RANGE = (0, 2**32 - 1)
LIST_CHUNK = 100  # sweeps read at a time while a status filter skips some


def _error(loc: tuple[str | int, ...], msg: str, type_: str, value: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"loc": ("body", *loc), "msg": msg, "type": type_}
    if value is not None:
        error["input"] = value
    return error


def _shown(value: Any) -> str:
    """A value as the request wrote it (JSON), for messages."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


class SweepService:
    def __init__(self, jobs: JobService):
        self.jobs = jobs
        self.store = SweepStore(jobs.store)
        jobs.recovery_hooks.append(self._requeue_fused)

    def _requeue_fused(self, rows: list[JobRow]) -> list[JobRow]:
        """At start: the unfinished runs of fused sweeps go back to the workers as groups, as
        they trained before (a run that trained fused goes on fused, on the same kernels and
        threads); returns the other jobs."""
        by_sweep: dict[str, list[JobRow]] = {}
        for row in rows:
            if row.sweep_id is not None:
                by_sweep.setdefault(row.sweep_id, []).append(row)
        taken: set[str] = set()
        for sweep_id, runs in by_sweep.items():
            found = self.store.get_sweep(sweep_id)
            if found is None or not found[0].fused or not self.jobs.backend.fuses(runs[0].variant):
                continue
            try:
                device = self.jobs.backend.resolve_device(
                    runs[0].device, VARIANTS[runs[0].variant].devices
                )
            except DeviceUnavailable:
                continue  # the job service keeps them queued until a fitting server runs
            model = VARIANTS[runs[0].variant].hyperparameters
            hps = [model.model_validate(run.hyperparameters) for run in runs]
            groups = self._groups(runs[0].variant, device, [(hp, 0) for hp in hps])
            self._enqueue(runs, hps, device, groups, found[0].fused_exact)
            taken.update(run.id for run in runs)
        return [row for row in rows if row.id not in taken]

    # -- commands -------------------------------------------------------------------------------
    async def submit(
        self, req: SweepCreate, idempotency_key: str | None = None
    ) -> Submitted[Sweep]:
        """Store and queue every run, all or none; with an idempotency key that an earlier
        request holds, nothing new: that request's sweep (`Submitted.replayed`)."""
        claim = self.jobs.claim("sweeps", idempotency_key, req)
        if claim is not None and (
            earlier := await run_in_threadpool(self.store.store.find_claim, claim)
        ):
            return Submitted(await self.jobs.replay(claim, earlier, self.get), replayed=True)
        # a grid of a 1 MiB body is checked off the event loop (in time linear in its size)
        base, points = await run_in_threadpool(self._validate, req)
        if req.webhook is not None:
            extra = [e.value for e in req.webhook.events if e.value not in SWEEP_EVENTS]
            if extra:
                raise InvalidFields(
                    [
                        _error(
                            ("webhook", "events"),
                            f"a sweep sends its end only ({', '.join(SWEEP_EVENTS)}), not "
                            f"{', '.join(extra)}",
                            "value_error",
                        )
                    ]
                )
        await self.jobs.check_webhook(req.webhook)
        variant = VARIANTS[req.variant]
        try:
            device = self.jobs.backend.resolve_device(req.device, variant.devices)
        except DeviceUnavailable as exc:
            raise InvalidFields(
                [_error(("device",), str(exc), "value_error", req.device)]
            ) from None
        fuse_asked = req.fuse is True or (req.fuse == "auto" and device.startswith("cuda"))
        if req.fuse is True and not self.jobs.backend.fuses(req.variant):
            raise InvalidFields(
                [_error(("fuse",), f"{req.variant!r} runs cannot be fused here", "value_error")]
            )
        fuse = fuse_asked and self.jobs.backend.fuses(req.variant)
        sweep_seed = None
        if "seed" not in req.grid:
            sweep_seed = req.seed if req.seed is not None else draw_seed()
        runs = [(hp, seed if seed is not None else sweep_seed) for hp, seed in points]
        groups = (
            self._groups(req.variant, device, runs) if fuse else [[i] for i in range(len(runs))]
        )
        now = utcnow()
        sweep_values = {
            "id": new_job_id(),
            "variant": req.variant,
            "label": req.label,
            "hyperparameters": base.model_dump(),
            "grid": self._normalised_grid(req, points),
            "seed": sweep_seed,
            "device": req.device,
            "fuse": "auto" if req.fuse == "auto" else str(req.fuse).lower(),
            "fused": any(len(group) > 1 for group in groups),
            "exact": req.exact if req.exact is not None else exact_default(req.fuse is True),
            "cancelled": False,
            "created_at": now,
            **stored_webhook(req.webhook),
        }
        run_values = [
            {
                "id": new_job_id(),
                "variant": req.variant,
                "label": req.label,
                "hyperparameters": hp.model_dump(),
                "seed": seed,
                "device": req.device,
                "status": JobStatus.queued.value,
                "step": 0,
                "steps": hp.steps,
                "created_at": now,
                "attempts": 0,
            }
            for hp, seed in runs
        ]
        self.jobs.store.check_writable()
        with self.jobs.queue_room(len(runs)):
            made = await self.jobs.committed(
                self.store.insert_sweep(sweep_values, run_values, claim)
            )
            if isinstance(made, Claimed):  # an earlier request took the key meanwhile
                assert claim is not None
                return Submitted(await self.jobs.replay(claim, made, self.get), replayed=True)
            sweep, rows = made
            self._enqueue(rows, [hp for hp, _ in runs], device, groups, sweep.fused_exact)
        return Submitted(sweep.to_sweep(rows))

    def _validate(
        self, req: SweepCreate
    ) -> tuple[Hyperparameters, list[tuple[Hyperparameters, int | None]]]:
        """The base hyperparameters, and every run's (hyperparameters, seed or None), in the
        grid's order; InvalidFields naming each wrong field and value."""
        variant = VARIANTS[req.variant]
        model = variant.hyperparameters
        limits = self.jobs.settings.limits
        errors: list[dict[str, Any]] = []
        try:
            base = parse_hyperparameters(model, req.hyperparameters, req.variant, limits)
        except HyperparameterError as exc:
            errors += [
                _error(("hyperparameters", *e["loc"]), e["msg"], e["type"]) for e in exc.errors
            ]
            base = None
        if not req.grid:
            errors.append(_error(("grid",), "name at least one field to sweep", "value_error"))
        # the size first: a grid over the limit is refused before any of its values is checked
        count = math.prod(len(values) for values in req.grid.values())
        most = self.jobs.settings.max_sweep_runs
        if count > most and req.grid:
            sizes = " x ".join(str(len(v)) for v in req.grid.values())
            raise InvalidFields(
                [
                    _error(
                        ("grid",),
                        f"the grid makes {sizes} = {count} runs, above this server's limit of "
                        f"{most} runs per sweep",
                        "too_long",
                    )
                ]
            )
        for field, values in req.grid.items():
            errors += self._check_field(req, model, field, values)
        if errors or base is None:
            raise InvalidFields(errors)
        fields = list(req.grid)
        points: list[tuple[Hyperparameters, int | None]] = []
        for combination in itertools.product(*req.grid.values()):
            chosen = dict(zip(fields, combination, strict=True))
            seed = chosen.pop("seed", None)
            hp = model.model_validate({**req.hyperparameters, **chosen})
            try:
                check_limits(req.variant, hp, limits)
            except HyperparameterError as exc:
                where = ", ".join(f"{k}={_shown(v)}" for k, v in chosen.items())
                raise InvalidFields(
                    [
                        _error(("grid", *e["loc"]), f"the run with {where}: {e['msg']}", e["type"])
                        for e in exc.errors
                    ]
                ) from None
            points.append((hp, seed))
        return base, points

    @staticmethod
    def _check_field(
        req: SweepCreate, model: type[Hyperparameters], field: str, values: list[Any]
    ) -> list[dict[str, Any]]:
        """What is wrong with one field of the grid and its values."""
        if field != "seed" and field not in model.model_fields:
            return [
                _error(
                    ("grid", field),
                    f"{req.variant!r} does not take this hyperparameter",
                    "extra_forbidden",
                )
            ]
        if field in req.hyperparameters:
            return [
                _error(
                    ("grid", field),
                    f"{field} is in hyperparameters too: a field is either shared or swept",
                    "value_error",
                )
            ]
        if field == "seed" and req.seed is not None:
            return [_error(("grid", "seed"), "seed is given outside the grid too", "value_error")]
        if not values:
            return [_error(("grid", field), f"{field} needs at least one value", "too_short")]
        errors = []
        for i, value in enumerate(values):
            if field == "seed":
                low, high = SEED_RANGE
                ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
                if not ok:
                    errors.append(
                        _error(
                            ("grid", "seed", i),
                            f"seed={_shown(value)}: must be an integer from {low} to {high}",
                            "value_error",
                            value,
                        )
                    )
                continue
            try:
                model.model_validate({**req.hyperparameters, field: value})
            except ValidationError as exc:  # say which value of the list is wrong
                messages = [
                    e["msg"]
                    for e in exc.errors(include_url=False)
                    if tuple(e["loc"])[:1] == (field,)
                ]
                if messages:
                    errors.append(
                        _error(
                            ("grid", field, i),
                            f"{field}={_shown(value)}: {'; '.join(messages)}",
                            "value_error",
                            value,
                        )
                    )
        repeated = _first_repeated(values)
        if repeated is not None and not errors:
            errors.append(
                _error(
                    ("grid", field),
                    f"{field} lists {_shown(repeated[0])} more than once",
                    "value_error",
                    repeated[0],
                )
            )
        return errors

    @staticmethod
    def _normalised_grid(
        req: SweepCreate, points: list[tuple[Hyperparameters, int | None]]
    ) -> dict[str, list[Any]]:
        """The grid's values as the runs have them (1 given for a float is 1.0)."""
        grid: dict[str, list[Any]] = {}
        stride = len(points)
        for field, values in req.grid.items():
            stride //= len(values)
            grid[field] = [
                points[i * stride][1] if field == "seed" else getattr(points[i * stride][0], field)
                for i in range(len(values))
            ]
        return grid

    def _groups(
        self, variant: str, device: str, runs: list[tuple[Hyperparameters, int | None]]
    ) -> list[list[int]]:
        """Indices of the runs, in groups that may fuse."""
        specs = [
            JobSpec(variant, hp, seed or 0, device, job_id=str(i))
            for i, (hp, seed) in enumerate(runs)
        ]
        groups = plan_groups(specs, self.jobs.settings.max_job_bytes, slots=self._slots_for(device))
        return [[int(spec.job_id) for spec in group] for group in groups]

    def _slots_for(self, device: str) -> int:
        """Worker slots that can take a group for `device`: its groups are spread over them."""
        backend = self.jobs.backend
        if device == "cpu":
            return max(1, getattr(backend, "cpu_workers", backend.slots))
        gpus = [d for d in backend.devices if d.startswith("cuda")]
        per_gpu = getattr(backend, "jobs_per_gpu", 1)
        return max(1, (len(gpus) if device == "cuda" else 1) * per_gpu)

    def _enqueue(
        self,
        rows: list[JobRow],
        hps: list[Hyperparameters],
        device: str,
        groups: list[list[int]],
        exact: bool,
    ) -> None:
        for row in rows:
            self.jobs.consumer.admit(row)
        backend = self.jobs.backend
        for group in groups:
            specs = [
                JobSpec(rows[i].variant, hps[i], rows[i].seed, device, job_id=rows[i].id)
                for i in group
            ]
            if len(specs) > 1:
                backend.submit_group(specs, exact)
            else:
                backend.submit(specs[0])

    async def cancel(self, sweep_id: str) -> Sweep:
        sweep, runs = await self._find(sweep_id)
        status = sweep.to_sweep(runs).status
        if status.is_final:
            raise SweepFinal(sweep_id, status.value)
        self.jobs.store.check_writable()
        await asyncio.wrap_future(self.store.mark_cancelled(sweep.pk))
        for run in runs:
            if run.status.is_final:
                continue
            with contextlib.suppress(JobFinal, JobNotFound):  # it ended, or went, meanwhile
                await self.jobs.cancel(run.id)
        return await self.get(sweep_id)

    async def pause(self, sweep_id: str) -> Sweep:
        """Pause every queued or running run (a run of a fused group goes on: it does not
        pause alone)."""
        sweep, runs = await self._find(sweep_id)
        status = sweep.to_sweep(runs).status
        if status.is_final:
            raise SweepFinal(sweep_id, status.value)
        self.jobs.store.check_writable()
        for run in runs:
            if run.status in (JobStatus.queued, JobStatus.running):
                with contextlib.suppress(JobFinal, JobNotFound, JobStateConflict):
                    await self.jobs.pause(run.id)
        return await self.get(sweep_id)

    async def resume(self, sweep_id: str) -> Sweep:
        """Resume every paused run."""
        sweep, runs = await self._find(sweep_id)
        status = sweep.to_sweep(runs).status
        if status.is_final:
            raise SweepFinal(sweep_id, status.value)
        self.jobs.store.check_writable()
        for run in runs:
            if run.status == JobStatus.paused:
                with contextlib.suppress(JobFinal, JobNotFound, JobStateConflict):
                    await self.jobs.resume(run.id)
        return await self.get(sweep_id)

    async def delete(self, sweep_id: str) -> None:
        sweep, runs = await self._find(sweep_id)
        busy = sum(1 for run in runs if not run.status.is_final)
        if busy:
            raise SweepNotFinal(sweep_id, busy)
        self.jobs.store.check_writable()
        outcome = await self.jobs.committed(self.store.delete_sweep(sweep_id))
        if outcome == "not_final":  # a run was requeued meanwhile (cannot happen today)
            raise SweepNotFinal(sweep_id, 1)
        if outcome == "gone":
            raise SweepNotFound(sweep_id)
        for run in runs:  # a run resumed or recovered may have checkpoints
            await run_in_threadpool(shutil.rmtree, self.jobs.checkpoint_root / run.id, True)

    # -- queries --------------------------------------------------------------------------------
    async def _find(self, sweep_id: str) -> tuple[SweepRow, list[JobRow]]:
        if not is_job_id(sweep_id):
            raise SweepNotFound(sweep_id)
        found = await run_in_threadpool(self.store.get_sweep, sweep_id)
        if found is None:
            raise SweepNotFound(sweep_id)
        return found

    async def get(self, sweep_id: str) -> Sweep:
        sweep, runs = await self._find(sweep_id)
        return sweep.to_sweep(runs)

    async def deliveries(self, sweep_id: str) -> list[WebhookDelivery]:
        sweep, _ = await self._find(sweep_id)
        return await run_in_threadpool(self.jobs.store.deliveries, sweep_id=sweep.id)

    async def list_sweeps(
        self,
        limit: int,
        cursor: str | None,
        statuses: list[str],
        variants: list[str],
        *,
        labels: list[str] | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[Sweep], str | None]:
        """Newest first; a status filter is applied to the sweeps as read (a sweep's status
        comes from its runs), reading on until a page is full."""
        before = decode_cursor(cursor) if cursor else None
        found: list[tuple[int, Sweep]] = []
        while len(found) <= limit:
            chunk = max(LIST_CHUNK, limit + 1) if statuses else limit + 1
            rows = await run_in_threadpool(
                partial(
                    self.store.list_sweeps,
                    chunk,
                    before,
                    variants or None,
                    labels=labels or None,
                    id_prefix=id_prefix,
                )
            )
            for row, runs in rows:
                sweep = row.to_sweep(runs)
                if not statuses or sweep.status.value in statuses:
                    found.append((row.pk, sweep))
            if len(rows) < chunk:
                break
            before = rows[-1][0].pk
        more = len(found) > limit
        found = found[:limit]
        return [s for _, s in found], encode_cursor(found[-1][0]) if more else None


def _first_repeated(values: list[Any]) -> tuple[Any] | None:
    """The first value that equals an earlier one (as `==` does: 1, 1.0 and True are one
    value), in one pass; None when they all differ."""
    seen: set[Any] = set()
    for value in values:
        key = value if isinstance(value, int | float | str | None) else json.dumps(value)
        if key in seen:
            return (value,)
        seen.add(key)
    return None
