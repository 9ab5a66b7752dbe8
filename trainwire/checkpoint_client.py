"""Checkpoints from Python: pause, resume, fork, list and download a job's saved states.
`Client` and `AsyncClient` (trainwire.client) have these methods.

```python
with Client() as tw:
    tw.pause(job.id)                          # stops before its next step, state saved
    tw.resume(job.id)                         # goes on from it, the same curve bit for bit
    [c.step for c in tw.checkpoints(job.id)]  # e.g. [20000, 30000, 40000, 50000]
    tw.download_checkpoint(job.id, 50000, "weights.safetensors")  # sha256 checked
    fork = tw.fork(job.id, 30000, learning_rate=1e-5)
```
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwire.models import CheckpointInfo, CheckpointList, Job

if TYPE_CHECKING:
    import httpx

    from trainwire.client import _Base

    _Mixin = _Base
else:
    _Mixin = object


class ChecksumMismatch(Exception):
    """A downloaded checkpoint's bytes do not have the sha256 the server listed."""


def fork_body(
    job_id: str,
    step: int,
    variant: str,
    hyperparameters: dict[str, Any],
    threads: int | None,
    checkpoint_every: int | None,
    label: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "variant": variant,
        "from": {"job_id": job_id, "step": step},
        "hyperparameters": hyperparameters,
    }
    for name, value in (
        ("threads", threads),
        ("checkpoint_every", checkpoint_every),
        ("label", label),
    ):
        if value is not None:
            body[name] = value
    return body


def _save(response: httpx.Response, path: str | Path) -> Path:
    data = response.content
    expected = response.headers.get("x-checkpoint-sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ChecksumMismatch(f"the checkpoint's bytes do not have the sha256 {expected}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


class CheckpointCalls(_Mixin):
    """The checkpoint methods of `Client`."""

    if TYPE_CHECKING:

        def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _get(self, path: str, **kwargs: Any) -> httpx.Response: ...
        def _create(self, path: str, body: dict[str, Any], key: str | None) -> httpx.Response: ...

    def pause(self, job_id: str) -> Job:
        """Pause a queued job (at once) or a running one (before its next step, its state
        checkpointed); its status becomes `paused`."""
        from trainwire.client import _body, _job_path, _parse

        return _parse(Job, _body(self._send("POST", _job_path(job_id) + "/pause")))

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again; it goes on from its checkpoint."""
        from trainwire.client import _body, _job_path, _parse

        return _parse(Job, _body(self._send("POST", _job_path(job_id) + "/resume")))

    def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        """The job's checkpoints in step order (the last one after its end: the weights)."""
        from trainwire.client import _body, _job_path, _parse

        page = _parse(CheckpointList, _body(self._get(_job_path(job_id) + "/checkpoints")))
        return page.items

    def download_checkpoint(self, job_id: str, step: int, path: str | Path) -> Path:
        """Write the checkpoint's safetensors file to `path`, its sha256 checked."""
        from trainwire.client import _job_path

        return _save(self._get(f"{_job_path(job_id)}/checkpoints/{int(step)}"), path)

    def fork(
        self,
        job_id: str,
        step: int,
        *,
        threads: int | None = None,
        checkpoint_every: int | None = None,
        label: str | None = None,
        idempotency_key: str | None = None,
        **hyperparameters: Any,
    ) -> Job:
        """A new job that starts from the job's checkpoint of `step`, with these
        hyperparameters changed (the rest, and the seed, are the parent's). Retried with its
        idempotency key as `submit` is: one fork, whatever happens."""
        from trainwire.client import _body, _parse

        parent = self.get(job_id)  # type: ignore[attr-defined]
        body = fork_body(
            job_id, step, parent.variant, hyperparameters, threads, checkpoint_every, label
        )
        return _parse(Job, _body(self._create("/v1/jobs", body, idempotency_key)))


class AsyncCheckpointCalls(_Mixin):
    """The checkpoint methods of `AsyncClient`."""

    if TYPE_CHECKING:

        async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        async def _get(self, path: str, **kwargs: Any) -> httpx.Response: ...
        async def _create(
            self, path: str, body: dict[str, Any], key: str | None
        ) -> httpx.Response: ...

    async def pause(self, job_id: str) -> Job:
        from trainwire.client import _body, _job_path, _parse

        return _parse(Job, _body(await self._send("POST", _job_path(job_id) + "/pause")))

    async def resume(self, job_id: str) -> Job:
        from trainwire.client import _body, _job_path, _parse

        return _parse(Job, _body(await self._send("POST", _job_path(job_id) + "/resume")))

    async def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        from trainwire.client import _body, _job_path, _parse

        response = await self._get(_job_path(job_id) + "/checkpoints")
        return _parse(CheckpointList, _body(response)).items

    async def download_checkpoint(self, job_id: str, step: int, path: str | Path) -> Path:
        from trainwire.client import _job_path

        return _save(await self._get(f"{_job_path(job_id)}/checkpoints/{int(step)}"), path)

    async def fork(
        self,
        job_id: str,
        step: int,
        *,
        threads: int | None = None,
        checkpoint_every: int | None = None,
        label: str | None = None,
        idempotency_key: str | None = None,
        **hyperparameters: Any,
    ) -> Job:
        from trainwire.client import _body, _parse

        parent = await self.get(job_id)  # type: ignore[attr-defined]
        body = fork_body(
            job_id, step, parent.variant, hyperparameters, threads, checkpoint_every, label
        )
        return _parse(Job, _body(await self._create("/v1/jobs", body, idempotency_key)))
