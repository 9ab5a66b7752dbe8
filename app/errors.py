"""Domain errors of the job service; app.main maps them to HTTP answers in one place."""

from __future__ import annotations


class JobNotFound(Exception):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class JobFinal(Exception):
    """The job is final: it cannot be cancelled."""

    def __init__(self, job_id: str, status: str):
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is already {status}")


class JobNotFinal(Exception):
    """The job is queued or running: it cannot be deleted."""

    def __init__(self, job_id: str, status: str):
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is {status}; cancel it first")


class JobStateConflict(Exception):
    """The job is not in a state the command applies to (pause, resume)."""

    def __init__(self, job_id: str, status: str, wanted: str):
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is {status}; {wanted}")


class CheckpointNotFound(JobNotFound):
    """The job has no checkpoint of this step (answered as a 404)."""

    def __init__(self, job_id: str, step: int):
        self.job_id = job_id
        self.step = step
        Exception.__init__(self, f"job {job_id} has no checkpoint of step {step}")


class InvalidField(Exception):
    """A request value that is wrong for a reason only the service can see."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, type_: str = "value_error"):
        self.errors = [{"loc": loc, "msg": msg, "type": type_}]
        super().__init__(msg)


class InvalidFields(InvalidField):
    """Several wrong values at once (each a pydantic-style error dict)."""

    def __init__(self, errors: list[dict[str, object]]):
        Exception.__init__(self, "; ".join(str(e["msg"]) for e in errors))
        self.errors = errors  # type: ignore[assignment]


class KeyResourceGone(Exception):
    """The job or sweep that an idempotency key created has been deleted since."""

    def __init__(self, key: str, resource_id: str):
        self.key, self.resource_id = key, resource_id
        super().__init__(
            f"Idempotency-Key {key!r} created {resource_id}, which has been deleted since; "
            "use a new key to submit again"
        )


class QueueFull(Exception):
    """No room in the queue; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


# Sweeps are answered as jobs are (404, 409): the handlers of the job errors serve them.
class SweepNotFound(JobNotFound):
    def __init__(self, sweep_id: str):
        self.job_id = self.sweep_id = sweep_id
        Exception.__init__(self, f"no sweep with id {sweep_id!r}")


class SweepFinal(JobFinal):
    """Every run of the sweep is final: it cannot be cancelled."""

    def __init__(self, sweep_id: str, status: str):
        self.job_id = self.sweep_id = sweep_id
        self.status = status
        Exception.__init__(self, f"sweep {sweep_id} is already {status}")


class SweepNotFinal(JobNotFinal):
    """Some run of the sweep is queued or running: the sweep cannot be deleted."""

    def __init__(self, sweep_id: str, runs: int):
        self.job_id = self.sweep_id = sweep_id
        self.status = "running"
        Exception.__init__(
            self, f"sweep {sweep_id} has {runs} run(s) queued or running; cancel it first"
        )
